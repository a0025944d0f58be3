"""The room as host events describe it: its products, segments and pins over time.

Pure: the worker folds a room's host log into one `RoomTimeline`; the viewer engine,
the tags and the host's metrics read it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
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


class Broadcast(msgspec.Struct, frozen=True, kw_only=True):
    """One show of a room, from its broadcast.started to its broadcast.ended."""

    broadcast_id: str
    started_at: int
    ended_at: int | None = None


class RoomTimeline(msgspec.Struct, kw_only=True):
    """What host events said about one room, built by the worker from host events.

    `started_at`, `ended_at`, segments and pins are the current (latest) broadcast's;
    `broadcasts` lists every broadcast of the room, oldest first.

    Books: every event of the room belongs to one broadcast, by its time: the first one
    not ended before it (`book_at`). So warm-up before a start goes to the broadcast
    that starts next, and so does anything after an end (a straggling payment too).
    Book n is the room's (n+1)-th broadcast, known before it starts.
    """

    room_id: str
    started_at: int | None = None
    ended_at: int | None = None
    broadcasts: list[Broadcast] = []
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
        if self.broadcasts and self.broadcasts[-1].started_at == self.started_at:
            return self.broadcasts[-1].broadcast_id
        return f"{self.room_id}@{self.started_at or 0}"

    def book_at(self, ts: int) -> int:
        """The book (broadcast index) an event at `ts` belongs to."""
        shows = self.broadcasts
        n = len(shows)
        if n == 0:
            return 0
        last = shows[-1]
        if last.ended_at is None:
            if n == 1 or ts > (shows[-2].ended_at or 0):
                return n - 1  # the common case: the show on air now
        elif ts > last.ended_at:
            return n
        return bisect_left([b.ended_at for b in shows if b.ended_at is not None], ts)

    def book_of(self, broadcast_id: str) -> int | None:
        """The book of a broadcast by its id, None if the room has no such broadcast."""
        return next((i for i, b in enumerate(self.broadcasts)
                     if b.broadcast_id == broadcast_id), None)

    def current_book(self) -> int:
        """The broadcast on air, or the latest (0 before any start)."""
        return max(0, len(self.broadcasts) - 1)

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
            named = event.broadcast_id or f"{self.room_id}@{event.ts}"
            if self.started_at is None:
                self.started_at = event.ts
                self.broadcasts = [*self.broadcasts, Broadcast(broadcast_id=named,
                                                               started_at=event.ts)]
            elif self.ended_at is not None and event.ts > self.ended_at:
                # The same room goes live again: a new broadcast, a fresh running order.
                self.started_at, self.ended_at, self.segments, self.pins = event.ts, None, [], []
                self.broadcasts = [*self.broadcasts, Broadcast(broadcast_id=named,
                                                               started_at=event.ts)]
        elif isinstance(event, BroadcastEnded):
            self.ended_at = event.ts
            if self.broadcasts:
                last = self.broadcasts[-1]
                self.broadcasts = [*self.broadcasts[:-1], msgspec.structs.replace(
                    last, ended_at=event.ts)]


def fold(room: RoomTimeline, events: Iterable[HostEvent]) -> RoomTimeline:
    """A copy of `room` with `events` observed, in their order (pure): the one fold of host
    events, for the worker's room log, the host's reader and the offline oracle alike."""
    out = RoomTimeline(room_id=room.room_id, started_at=room.started_at,
                       ended_at=room.ended_at, broadcasts=list(room.broadcasts),
                       segments=list(room.segments),
                       pins=list(room.pins), products=dict(room.products))
    for event in events:
        out.observe(event)
    return out


__all__ = ["Broadcast", "Product", "RoomTimeline", "fold"]
