"""Stock-aware nudges while a worker reads a backlog over several partitions, on the real
viewer path (the pipeline with the inventory first, the host log and the Engagement, on
real Redis and Kafka; the test says which partitions are behind).

A room's orders are spread over the order topic's partitions, each on its viewer's, but
a partition's engine waited only for its own two topics. Reading a backlog, viewer A's
dwell (partition 0) was judged while viewer B's order that sold the product out a
minute into the show (partition 1) was still unread, and the popup went out for a
product with none left. Now a partition's timers wait for every order-topic partition
of the worker that is still behind (`Engagement._stock_until`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaProducer
from helpers import Sends, show_stats, viewer_path
from redis.asyncio import Redis

from stream.core.batch import Record
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import (
    BroadcastStarted,
    Event,
    OrderItem,
    OrderPlaced,
    ProductViewed,
    StockSet,
    ViewerHeartbeat,
    ViewerJoined,
)
from stream.core.topics import Topics
from stream.engine.nudges import holdout_variant

pytestmark = pytest.mark.integration

RULE = "dwell-3min"  # rules/nudges.toml: a product card open 180 s, no order; 10% holdout


def records(topic: str, partition: int, events: Sequence[Event]) -> list[Record]:
    return [Record(topic, partition, offset, encode(e)) for offset, e in enumerate(events)]


def treated(prefix: str) -> str:
    """A viewer id outside the rule's holdout, so that a decision is a nudge shown."""
    return next(v for v in (f"{prefix}-{i}" for i in range(100))
                if holdout_variant(v, RULE, 0.1) == "treatment")


@pytest.mark.parametrize("sold_out", [True, False], ids=["sold-out-on-another-partition",
                                                          "control-in-stock"])
async def test_a_dwell_waits_for_orders_still_unread_on_another_partition(
        settings: Settings, redis: Redis, producer: AIOKafkaProducer, sold_out: bool) -> None:
    topics = Topics(settings.topic_prefix)
    unread = {(topics.order_events, 1)}  # partition 1's order backlog: not read yet
    engagement, pipeline = viewer_path(redis, settings, Sends(producer), selling=True,
                                       behind=lambda topic, p: (topic, p) in unread)
    await engagement.adopt({0, 1})  # assigned to this worker: both have engines
    room, t0 = f"room-{time.time_ns()}", int(time.time() * 1000)
    a, b = treated("a"), treated("b")

    async def batch(rs: list[Record]) -> dict[str, int | float]:
        await pipeline.process(rs)
        await pipeline.drain()
        await engagement.tick()  # settles: the decisions are counted
        return await show_stats(redis, room)

    await batch(records(topics.host_events, 0, [
        BroadcastStarted(event_id="bs", room_id=room, ts=t0),
        StockSet(event_id="ss", room_id=room, ts=t0, sku="rice", qty=1, name="rice")]))
    # Partition 0 read 400 s into the show: A opened rice at 2 s and stayed.
    views: list[Event] = [
        ViewerJoined(event_id="j", room_id=room, viewer_id=a, ts=t0 + 1_000,
                     source="douyin"),
        ProductViewed(event_id="pv", room_id=room, viewer_id=a, ts=t0 + 2_000, sku="rice")]
    views += [ViewerHeartbeat(event_id=f"h{s}", room_id=room, viewer_id=a,
                              ts=t0 + s * 1000) for s in range(20, 401, 20)]
    stats = await batch(records(topics.viewer_events, 0, views))
    decided = {k: v for k, v in stats.items() if k.startswith(("nudges", "suppressed:"))}
    assert decided == {}, "judged before partition 1's orders were read"

    # Partition 1's orders come: B bought the last unit a minute in (or oil, not rice).
    unread.clear()
    sku = "rice" if sold_out else "oil"
    stats = await batch(records(topics.order_events, 1, [OrderPlaced(
        event_id="op", room_id=room, viewer_id=b, order_id="o1", ts=t0 + 60_000,
        items=[OrderItem(sku, 1, 9.9)])]))
    if sold_out:
        assert stats.get(f"suppressed:{RULE}:sold_out") == 1
        assert stats.get("nudges", 0) == 0
    else:
        assert stats.get(f"nudges:{RULE}:treatment") == 1
