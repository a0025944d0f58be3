"""Each room's stock changes as a log in Redis, shared by every worker's viewer engines.

A viewer's nudge is decided on the worker that owns the viewer's partition, but the
orders that empty a SKU are applied by whichever worker owns *their* partitions. So the
workers' coalesced stock feed (at most 10 updates per SKU a second) also appends each
update, as `[sku, ts, available, version]`, to the room's stock log; every worker reads what is
new with the host log (`RoomLog.refresh`) into a `StockBook`. A worker that starts
reads the whole log, so a replay judges with every point the live decision had.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from stream.core.models import StockUpdate
from stream.engine.stock import PLENTY, StockBook
from stream.store import keys
from stream.store.connect import AnyPipeline

# As long as the effects' once-keys: a replay within it still finds the points.
STOCK_LOG_TTL_S = 3 * 24 * 3600

Point = tuple[str, int, int, int]  # (sku, ts, available, version)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Point).decode


class StockLogWriter:
    """Appends updates to their rooms' stock logs, skipping runs above PLENTY (no rule
    tells those apart, and a hot SKU's thousands of changes would fill the log)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}  # what this process last appended

    def queue(self, pipe: AnyPipeline, updates: Iterable[StockUpdate]) -> int:
        """Queue the appends on `pipe`; returns how many."""
        by_room: dict[str, list[bytes]] = {}
        for u in updates:
            key = (u.room_id, u.sku)
            last = self._last.get(key)
            if last is not None and last > PLENTY and u.available > PLENTY:
                continue
            self._last[key] = u.available
            by_room.setdefault(u.room_id, []).append(
                _encode((u.sku, u.ts, u.available, u.version)))
        for room, entries in by_room.items():
            pipe.rpush(keys.stock_log(room), *entries)
            pipe.expire(keys.stock_log(room), STOCK_LOG_TTL_S)
        return sum(len(e) for e in by_room.values())


def fold_points(book: StockBook, room_id: str, entries: Iterable[bytes]) -> None:
    """Add raw stock-log entries of `room_id` to `book`."""
    for entry in entries:
        sku, ts, available, version = _decode(entry)
        book.observe(room_id, sku, ts, available, version)
