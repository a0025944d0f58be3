"""Reading a broadcast's orders back from the inventory's books (for its pick lists).

The inventory script (stream/store/inventory.py) keeps each order in a hash under the
room's order prefix (`status`, `reason`, `viewer`, `lines` as `sku qty;…`, `prices` as
`sku price;…`, `amount`) and adds every order placed on a broadcast's books to that
broadcast's set (`keys.book_orders`). This module reads both, in pipelines of `CHUNK`
orders, and decodes them into plain records; what to make of them is the host view's.
"""

from __future__ import annotations

import msgspec

from stream.store import keys
from stream.store.connect import Client
from stream.store.replies import text

# Orders per pipeline: a show of tens of thousands of orders is read in a few round trips,
# none of which holds Redis for long (an HMGET each).
CHUNK = 1000
_FIELDS = ("status", "reason", "viewer", "lines", "prices", "amount")


class Line(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    qty: int
    price: float | None  # None for an order kept before prices were (read the SKU's)


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """One order as the inventory's books hold it now."""

    order_id: str
    viewer_id: str
    status: str  # reserved (unpaid), confirmed (paid), released, rejected
    reason: str  # released: cancelled, payment_failed, expired; rejected: sold_out, …
    lines: tuple[Line, ...]
    amount: float


def decode_lines(lines: str, prices: str) -> tuple[Line, ...]:
    """The order's lines from the script's `sku qty;…` and `sku price;…` fields."""
    price_of: dict[str, float] = {}
    for item in filter(None, prices.split(";")):
        sku, _, price = item.rpartition(" ")
        price_of[sku] = float(price)
    out = []
    for item in filter(None, lines.split(";")):
        sku, _, qty = item.rpartition(" ")
        out.append(Line(sku=sku, qty=int(qty), price=price_of.get(sku)))
    return tuple(out)


async def orders_of(redis: Client, room_id: str, book: int) -> list[Order]:
    """Every order placed on the books of the room's broadcast `book`, by order id.

    An order whose hash has expired (past the retention) is left out: its set entry
    outlives it by at most the same retention.
    """
    ids = sorted(text(i) for i in await redis.smembers(keys.book_orders(room_id, book)))
    prefix = keys.order_prefix(room_id)
    out: list[Order] = []
    for lo in range(0, len(ids), CHUNK):
        chunk = ids[lo:lo + CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for order_id in chunk:
                pipe.hmget(prefix + order_id, *_FIELDS)
            rows = await pipe.execute()
        for order_id, row in zip(chunk, rows, strict=True):
            status, reason, viewer, lines, prices, amount = (
                (v or b"").decode() for v in row)
            if not status:
                continue
            out.append(Order(order_id=order_id, viewer_id=viewer, status=status,
                             reason=reason, lines=decode_lines(lines, prices),
                             amount=float(amount or 0)))
    return out
