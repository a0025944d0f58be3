"""The sweeper expires reservations on inventory's own clock (stream/store/clocks.py):
viewer events read ahead of the order topic do not expire an order whose payment is
still on its way; a room gone quiet still expires on the wall."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from stream.core.batch import Part, Record
from stream.core.models import (
    Event,
    OrderItem,
    OrderPlaced,
    OrderResult,
    StockSet,
    ViewerHeartbeat,
)
from stream.core.topics import Topics
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


def part(topic: str, offset: int, *events: Event) -> Part:
    return Part(Record(topic, 0, offset, b""), list(events), frozenset({ROOM}))


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
