"""A backlog's orders across takes: the inventory applies each take in event time
(`orders._merged`), but not across takes, so which buyer gets the last unit hangs on
which partition a take happened to hold. The known gap behind `bench/viewer_engine.py`'s
off runs (README, Nudges the host can trust, "Stock at fire time", session 14).

Marked `xfail(strict=True)`: it passes while the gap is there and fails once a fix
holds a take's orders while another order partition is behind, so that whoever fixes
it removes the mark and the test then guards the fix."""

from __future__ import annotations

import pytest
from helpers import collector
from redis.asyncio import Redis

from stream.core.batch import Part, Record
from stream.core.models import (
    Event,
    OrderItem,
    OrderPaymentFailed,
    OrderPlaced,
    OrderResult,
    StockSet,
)
from stream.core.topics import Topics, partition_for
from stream.engine.stock import StockBook
from stream.store.inventory import Inventory
from stream.worker.orders import Orders
from stream.worker.stockfeed import StockFeed

pytestmark = pytest.mark.integration

TOPICS = Topics("takes.")
ROOM = "take-room"
T0 = 1_600_000_000_000


def at(cls: type[Event], s: int, viewer: str, order: str, **more: object) -> Event:
    return cls(event_id=f"{order}-{s}", room_id=ROOM, ts=T0 + s * 1000,  # type: ignore[call-arg]
               viewer_id=viewer, order_id=order, **more)


@pytest.mark.xfail(strict=True, reason="a backlog's orders are not merged across takes")
async def test_a_take_does_not_sell_a_unit_an_unread_release_frees_first(db: Redis) -> None:
    """One unit. In event time: B's order at 50 s takes it, B's payment fails at 65 s and
    frees it, A's order at 70 s takes it. Read as a backlog: the first take holds A's
    order and B's order but not yet B's failure (B's partition is behind), so A is
    refused; the failure comes in the next take. The stock book then says one unit
    left at 200 s, where event time says none: dwell nudges go out that offline, and in
    event time, would be suppressed as sold out."""
    results: list[tuple[int, OrderResult]] = []

    async def publish(updates: object) -> None:
        return None

    book = StockBook()
    orders = Orders(redis=db, inventory=Inventory(db), feed=StockFeed(publish, clock=lambda: 0.0),
                    send=collector(results), topics=TOPICS, partitions=2, stock=book)
    pa, pb = partition_for("v1", 2), partition_for("v2", 2)
    assert pa != pb
    rice = [OrderItem("rice", 1, 9.9)]

    def on(p: int, offset: int, event: Event) -> Part:
        return Part(Record(TOPICS.order_events, p, offset, b""), [event], frozenset({ROOM}))

    await orders.handle([Part(Record(TOPICS.host_events, 0, 0, b""), [StockSet(
        event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=1)], frozenset({ROOM}))])
    await orders.handle([on(pb, 0, at(OrderPlaced, 50, "v2", "b1", items=rice)),
                         on(pa, 0, at(OrderPlaced, 70, "v1", "a1", items=rice))])
    await orders.handle([on(pb, 1, at(OrderPaymentFailed, 65, "v2", "b1",
                                      reason="card_declined"))])
    a1 = [(r.status, r.reason) for _, r in results if r.order_id == "a1"]
    assert a1 == [("reserved", None)], "A's order, after B's failure in event time"
    assert book.available_at(ROOM, "rice", T0 + 200_000) == 0
