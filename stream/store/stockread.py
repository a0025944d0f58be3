"""Reading a room's stock without the scripts that change it.

The gateway only reads stock (snapshots, resyncs); building an `Inventory` for that
would register the APPLY script on its connection pool for nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from stream.core.models import StockUpdate
from stream.store import keys
from stream.store.buckets import stock_rows
from stream.store.connect import Client


async def rows(redis: Client, room_id: str, *fields: str,
               consistent: bool = False) -> list[tuple[str, list[bytes | None]]]:
    """(sku, values of `fields`) for each of the room's SKUs, sorted by SKU."""
    skus = sorted(s.decode() if isinstance(s, bytes) else s
                  for s in await redis.smembers(keys.skus(room_id)))
    # A bucketed SKU's counts are the sums of its buckets (buckets.py).
    found = await stock_rows(redis, room_id, skus, fields, consistent=consistent)
    return list(zip(skus, found, strict=True))


async def available_text(redis: Client, wanted: Sequence[tuple[str, str]],
                         ) -> dict[tuple[str, str], str]:
    """Each (room, sku)'s available count as text, `?` where unknown: what a nudge's
    `{remaining}` says. `wanted` sorted, so each room's SKUs are read in one call."""
    answers: list[bytes | None] = []
    for room, group in itertools.groupby(wanted, key=lambda k: k[0]):
        rows = await stock_rows(redis, room, [sku for _, sku in group], ("available",))
        answers += [row[0] for row in rows]
    return {k: (v or b"?").decode() for k, v in zip(wanted, answers, strict=True)}


class StockReader:
    """The room's current stock, one record per SKU, read-only."""

    __slots__ = ("redis",)

    def __init__(self, redis: Client) -> None:
        self.redis = redis

    async def levels(self, room_id: str) -> list[StockUpdate]:
        return [StockUpdate(room_id=room_id, sku=sku, available=int(r[0] or 0),
                            reserved=int(r[1] or 0), sold=int(r[2] or 0),
                            version=int(r[3] or 0), ts=0)
                for sku, r in await rows(self.redis, room_id, "available", "reserved",
                                         "sold", "version")]


async def products(redis: Client, room_id: str) -> list[tuple[str, str | None, float | None]]:
    """(sku, name, price) of the room's SKUs, as the last `stock.set` gave them."""
    return [(sku, None if name is None else name.decode(),
             None if price is None else float(price))
            for sku, (name, price) in await rows(redis, room_id, "name", "price")]
