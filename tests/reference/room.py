"""What the host said about a room: start, end, segments, pins and product names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    HostEvent,
    ProductPinned,
    SegmentStarted,
    StockSet,
)


@dataclass
class Room:
    """One broadcast of one room (the model assumes one broadcast per room)."""

    room_id: str
    started_at: int | None = None
    ended_at: int | None = None
    segments: list[tuple[int, str]] = field(default_factory=list)  # (ts, segment)
    pins: list[tuple[int, str]] = field(default_factory=list)  # (ts, sku)
    products: dict[str, tuple[str, float | None]] = field(default_factory=dict)

    def segment_at(self, ts: int) -> str | None:
        """The last segment started at or before `ts`."""
        started = [s for t, s in sorted(self.segments, key=lambda x: x[0]) if t <= ts]
        return started[-1] if started else None

    def pinned_at(self, ts: int) -> str | None:
        pinned = [s for t, s in sorted(self.pins, key=lambda x: x[0]) if t <= ts]
        return pinned[-1] if pinned else None


def room_of(room_id: str, events: Iterable[HostEvent]) -> Room:
    """The room as its host events describe it, taken in event-time order."""
    room = Room(room_id=room_id)
    for e in sorted((e for e in events if e.room_id == room_id), key=lambda e: e.ts):
        if isinstance(e, BroadcastStarted) and room.started_at is None:
            room.started_at = e.ts
        elif isinstance(e, BroadcastEnded):
            room.ended_at = e.ts
        elif isinstance(e, SegmentStarted):
            room.segments.append((e.ts, e.segment))
        elif isinstance(e, ProductPinned):
            room.pins.append((e.ts, e.sku))
        elif isinstance(e, StockSet):
            old_name, old_price = room.products.get(e.sku, (e.sku, None))
            room.products[e.sku] = (e.name or old_name,
                                    e.price if e.price is not None else old_price)
    return room
