"""Which counters an event moves, per event type: the ledger applies them once per record.

The host's metrics (`stream.hostview.metrics`) read these counters back; the names are
documented there. Kept in core because the worker counts (pipeline, inventory,
presence) and the host view reads, and neither may import the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from stream.core.models import (
    CartClicked,
    Comment,
    Event,
    Like,
    OrderPaymentFailed,
    ViewerJoined,
    ViewerLeft,
)

MINUTE_MS = 60_000


def minute_of(ts: int) -> int:
    """The event-time minute bucket of `ts` (epoch ms)."""
    return ts // MINUTE_MS


def layer(returning: bool | None) -> str:
    return "unknown" if returning is None else ("returning" if returning else "new")


def _m(event: Event, name: str) -> str:
    return f"m:{event.ts // MINUTE_MS}:{name}"


# By exact type: called for every event, most of which (heartbeats, views) count nothing.
_COUNTERS: dict[type, Callable[[Any], list[tuple[str, int]]]] = {
    ViewerJoined: lambda e: [(_m(e, "joins"), 1)],
    ViewerLeft: lambda e: [(_m(e, "leaves"), 1)],
    Like: lambda e: [("likes", e.count), (_m(e, "likes"), e.count)],
    Comment: lambda e: [(_m(e, "comments"), 1)],
    CartClicked: lambda e: [(_m(e, "cart_clicks"), 1), (f"s:{e.ts // 1000}:cart_clicks", 1)],
    OrderPaymentFailed: lambda e: [(_m(e, "payment_failed"), 1)],
}


def count(events: Iterable[Event], into: Counter[str]) -> None:
    """Add what these events add to their room's stats (applied once per Kafka record)."""
    for event in events:
        counters = _COUNTERS.get(type(event))
        if counters is not None:
            for name, delta in counters(event):
                into[name] += delta


