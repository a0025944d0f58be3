"""Small builders shared by tests."""

from __future__ import annotations

import itertools
import time
from typing import Any

_ids = itertools.count()


def now_ms() -> int:
    return int(time.time() * 1000)


def ev(type_: str, **fields: Any) -> dict[str, Any]:
    """A valid event dict of `type_` with fresh ids; `fields` override or add."""
    base: dict[str, Any] = {"type": type_, "event_id": f"e{next(_ids)}-{time.time_ns()}",
                            "room_id": "r1", "ts": now_ms()}
    if not type_.startswith(("segment.", "product.pinned", "broadcast.", "stock.")):
        base["viewer_id"] = "v1"
    if type_.startswith("order."):
        base["order_id"] = "o1"
    base.update(fields)
    return base

