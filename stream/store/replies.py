"""Redis replies as the types our clients get: bytes, never str.

Every client here is built with `decode_responses=False` (blobs such as the viewer state
are binary), but redis-py types a reply as `bytes | str`. These narrow it once, in one
place, instead of a cast at every read.
"""

from __future__ import annotations

from typing import Any


def text(raw: bytes | str | Any) -> str:
    """A reply's field or value as text."""
    return raw if isinstance(raw, str) else bytes(raw).decode()


def number(raw: bytes | str | Any) -> int | float:
    """A counter: a float when it holds a decimal point (money), else an int."""
    value = text(raw)
    return float(value) if "." in value else int(value)
