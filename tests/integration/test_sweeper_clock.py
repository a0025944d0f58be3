"""The sweeper expires reservations on inventory's own clock (stream/store/clocks.py):
viewer events read ahead of the order topic do not expire an order whose payment is
still on its way; a room gone quiet still expires on the wall. And one call's orders
from several partitions expire in event time, not in the order the records came."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from stream.core.batch import Part, Record, SendMany
from stream.core.models import (
    Event,
    OrderItem,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    OrderResult,
    StockSet,
    ViewerHeartbeat,
)
from stream.core.topics import Topics, partition_for
from stream.local.embedded import EmbeddedStack
from stream.store.clocks import RoomClocks
from stream.store.inventory import Inventory
from stream.worker.orders import Orders
from stream.worker.stockfeed import StockFeed

pytestmark = pytest.mark.integration

TOPICS = Topics("sweep.")
ROOM = "sweep-room"
T0 = 1_600_000_000_000  # event time, far from the wall clock below
TTL_MS = 60_000


@pytest.fixture
async def db(stack: EmbeddedStack) -> AsyncIterator[Redis]:
    """A database of its own: the sweeper walks every room it knows of."""
    client = Redis.from_url(stack.redis_url, db=7)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def part(topic: str, offset: int, *events: Event, partition: int = 0) -> Part:
    return Part(Record(topic, partition, offset, b""), list(events), frozenset({ROOM}))


def collector(results: list[tuple[int, OrderResult]]) -> SendMany:
    async def send(topic: str, partition: int,
                   records: Sequence[tuple[bytes | None, bytes]]) -> Awaitable[object]:
        results.extend((partition, msgspec.json.decode(value, type=OrderResult))
                       for _, value in records)
        acked: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked
    return send


async def test_views_ahead_of_orders_do_not_expire_a_reservation(db: Redis) -> None:
    wall = [1_000_000.0]  # seconds, moved by hand
    results: list[OrderResult] = []

    async def send(topic: str, partition: int,
                   records: Sequence[tuple[bytes | None, bytes]]) -> Awaitable[object]:
        results.extend(msgspec.json.decode(value, type=OrderResult) for _, value in records)
        acked: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked

    async def publish(updates: object) -> None:
        return None

    orders = Orders(redis=db, inventory=Inventory(db, reservation_ttl_ms=TTL_MS),
                    feed=StockFeed(publish, clock=lambda: wall[0]), send=send,
                    topics=TOPICS, partitions=1, clock=lambda: wall[0])
    await orders.handle([
        part(TOPICS.host_events, 0, StockSet(event_id="s", room_id=ROOM, ts=T0, sku="rice",
                                              qty=5)),
        part(TOPICS.order_events, 0, OrderPlaced(
            event_id="o", room_id=ROOM, ts=T0 + 1_000, viewer_id="v1", order_id="o1",
            items=[OrderItem("rice", 1, 9.9)]))])
    assert [r.status for r in results] == ["reserved"]

    # The viewer topic is read 10 minutes of show ahead; the order topic has not moved.
    await orders.handle([part(TOPICS.viewer_events, 0, ViewerHeartbeat(
        event_id="h", room_id=ROOM, ts=T0 + 600_000, viewer_id="v2"))])
    wall[0] += 1
    assert await orders.sweep() == 0
    # The room's clock (the host's view) did follow the views.
    room_now = await RoomClocks(db).now(ROOM, wall_now_ms=int(wall[0] * 1000))
    assert room_now is not None and room_now >= T0 + 600_000

    # Quiet on the order topic for longer than the TTL of wall time: it expires.
    wall[0] += TTL_MS / 1000
    assert await orders.sweep() == 1
    assert [(r.status, r.reason) for r in results][-1] == ("released", "expired")


async def test_a_partition_read_ahead_in_one_call_does_not_expire_another(db: Redis) -> None:
    """A worker that starts behind a show reads the backlog round-robin across partitions:
    partition 0's payment 600 s after its order came, in one call, before partition 1's
    payment_failed 2 s after its own. Each op expires what its ts has passed, in the whole
    room; in record order that was o2, due 118 s after its payment_failed."""
    results: list[tuple[int, OrderResult]] = []

    async def publish(updates: object) -> None:
        return None

    orders = Orders(redis=db, inventory=Inventory(db, reservation_ttl_ms=TTL_MS * 2),
                    feed=StockFeed(publish, clock=lambda: 1_000_000.0), send=collector(results),
                    topics=TOPICS, partitions=2, clock=lambda: 1_000_000.0)
    await orders.handle([part(TOPICS.host_events, 0, StockSet(
        event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=5))])

    def at(cls: type[Event], s: int, viewer: str, order: str, **more: object) -> Event:
        return cls(event_id=f"{order}-{s}", room_id=ROOM, ts=T0 + s * 1000,  # type: ignore[call-arg]
                   viewer_id=viewer, order_id=order, **more)

    item = [OrderItem("rice", 1, 9.9)]
    p1, p2 = partition_for("v1", 2), partition_for("v2", 2)  # as the gateway keys them
    assert p1 != p2
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 10, "v1", "o1", items=item), partition=p1),
        part(TOPICS.order_events, 0, at(OrderPlaced, 88, "v2", "o2", items=item), partition=p2),
        part(TOPICS.order_events, 1, at(OrderPaid, 610, "v1", "o1"), partition=p1),
        part(TOPICS.order_events, 1, at(OrderPaymentFailed, 90, "v2", "o2",
                                        reason="card_declined"), partition=p2)])
    o2 = [(p, r.status, r.reason) for p, r in results if r.order_id == "o2"]
    assert o2 == [(p2, "reserved", None), (p2, "released", "payment_failed")]
    o1 = [(p, r.status, r.reason) for p, r in results if r.order_id == "o1"]
    assert o1 == [(p1, "reserved", None), (p1, "released", "expired"),
                  (p1, "confirmed", "re-reserved after expired")]
