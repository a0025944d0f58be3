"""The room as host events describe it: its products, segments and pins over time.

Pure: the worker folds a room's host log into one `RoomTimeline`; the viewer engine,
the tags and the host's metrics read it.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterable
from typing import Any

import msgspec

from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    HostEvent,
    ProductPinned,
    SegmentStarted,
    StockSet,
)


class Product(msgspec.Struct, frozen=True):
    name: str
    price: float | None


def _ts(entry: tuple[Any, ...]) -> int:
    return entry[0]  # type: ignore[no-any-return]


class RoomTimeline(msgspec.Struct, kw_only=True):
    """What host events said about one room, built by the worker from host events."""

    room_id: str
    started_at: int | None = None
    ended_at: int | None = None
    segments: list[tuple[int, str, str | None]] = []  # (ts, segment, sku), sorted by ts
    pins: list[tuple[int, str]] = []  # (ts, sku), sorted by ts
    products: dict[str, Product] = {}

    def segment_at(self, ts: int) -> tuple[str, str | None] | None:
        """The segment on air at `ts` (the last one started at or before it) and its sku."""
        i = bisect_right(self.segments, ts, key=_ts)
        return self.segments[i - 1][1:] if i else None

    def pinned_at(self, ts: int) -> str | None:
        """The product pinned at `ts`, if any."""
        i = bisect_right(self.pins, ts, key=_ts)
        return self.pins[i - 1][1] if i else None

    @property
    def broadcast_id(self) -> str:
        return f"{self.room_id}@{self.started_at or 0}"

    def observe(self, event: HostEvent) -> None:
        """Fold one host event in; host events may arrive out of ts order."""
        if isinstance(event, SegmentStarted):
            insort(self.segments, (event.ts, event.segment, event.sku), key=_ts)
        elif isinstance(event, ProductPinned):
            insort(self.pins, (event.ts, event.sku), key=_ts)
        elif isinstance(event, StockSet):
            old = self.products.get(event.sku)
            name = event.name or (old.name if old else event.sku)
            price = event.price if event.price is not None else (old.price if old else None)
            self.products[event.sku] = Product(name, price)
        elif isinstance(event, BroadcastStarted):
            if self.started_at is None:
                self.started_at = event.ts
            elif self.ended_at is not None and event.ts > self.ended_at:
                # The same room goes live again: a new broadcast, a fresh running order.
                self.started_at, self.ended_at, self.segments, self.pins = event.ts, None, [], []
        elif isinstance(event, BroadcastEnded):
            self.ended_at = event.ts


def fold(room: RoomTimeline, events: Iterable[HostEvent]) -> RoomTimeline:
    """A copy of `room` with `events` observed, in their order (pure): the one fold of host
    events, for the worker's room log, the host's reader and the offline oracle alike."""
    out = RoomTimeline(room_id=room.room_id, started_at=room.started_at,
                       ended_at=room.ended_at, segments=list(room.segments),
                       pins=list(room.pins), products=dict(room.products))
    for event in events:
        out.observe(event)
    return out


__all__ = ["Product", "RoomTimeline", "fold"]
