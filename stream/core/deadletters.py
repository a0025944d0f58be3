"""Dead letters: the raw input, the error, and where it came from (SPEC: Outputs)."""

from __future__ import annotations

import re

from stream.core.codec import encode
from stream.core.models import DeadLetter, Origin

# Input that names no room (it is not even JSON) is counted in this room's stats.
NO_ROOM = "_"
# Enough of the raw input to debug it without letting one huge record bloat the topic.
MAX_RAW = 16_384
_ROOM = re.compile(rb'"room_id"\s*:\s*"([A-Za-z0-9._:@\-]{1,64})"')


def room_of(raw: bytes) -> str:
    """The room a bad record seems to be for, to count it there; `_` when unknown."""
    match = _ROOM.search(raw[:MAX_RAW])
    return match.group(1).decode() if match else NO_ROOM


def dead_letter(raw: bytes, error: str, origin: Origin, *, now_ms: int) -> bytes:
    """One encoded dead-letter record."""
    text = raw[:MAX_RAW].decode("utf-8", errors="replace")
    return encode(DeadLetter(raw=text, error=error, origin=origin, ts=now_ms))
