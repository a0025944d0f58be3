"""Stock-aware nudges while a worker reads a backlog over several partitions, on the real
viewer path (the pipeline with the inventory first, the host log and the Engagement, on
real Redis and Kafka; the test says which partitions are behind).

A room's orders are spread over the order topic's partitions, each on its viewer's, but
a partition's engine waited only for its own two topics. Reading a backlog, viewer A's
dwell (partition 0) was judged while viewer B's order that sold the product out a
minute into the show (partition 1) was still unread, and the popup went out for a
product with none left. Now a partition's timers wait for every order-topic partition
of the worker that is still behind (`Engagement._stock_until`), and for those of other
workers not read to their end, as far as their owners tell (`_others_until`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaProducer
from helpers import Sends, show_stats, viewer_path
from redis.asyncio import Redis

from stream.core.batch import Part, Record
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import (
    BroadcastStarted,
    Event,
    OrderItem,
    OrderPlaced,
    ProductViewed,
    StockSet,
    StockUpdate,
    ViewerHeartbeat,
    ViewerJoined,
)
from stream.core.topics import Topics
from stream.engine.nudges import holdout_variant
from stream.store.inventory import Inventory
from stream.store.stocklog import StockLogWriter
from stream.worker.orders import Orders
from stream.worker.stockfeed import StockFeed

pytestmark = pytest.mark.integration

RULE = "dwell-3min"  # rules/nudges.toml: a product card open 180 s, no order; 10% holdout


def records(topic: str, partition: int, events: Sequence[Event]) -> list[Record]:
    return [Record(topic, partition, offset, encode(e)) for offset, e in enumerate(events)]


def treated(prefix: str) -> str:
    """A viewer id outside the rule's holdout, so that a decision is a nudge shown."""
    return next(v for v in (f"{prefix}-{i}" for i in range(100))
                if holdout_variant(v, RULE, 0.1) == "treatment")


def on_air(room: str, t0: int) -> list[Event]:
    """The show starts with one unit of rice."""
    return [BroadcastStarted(event_id="bs", room_id=room, ts=t0),
            StockSet(event_id="ss", room_id=room, ts=t0, sku="rice", qty=1, name="rice")]


def dwelling(room: str, viewer: str, t0: int) -> list[Event]:
    """`viewer` opens rice at 2 s and stays, read up to 400 s into the show."""
    views: list[Event] = [
        ViewerJoined(event_id="j", room_id=room, viewer_id=viewer, ts=t0 + 1_000,
                     source="douyin"),
        ProductViewed(event_id="pv", room_id=room, viewer_id=viewer, ts=t0 + 2_000,
                      sku="rice")]
    return views + [ViewerHeartbeat(event_id=f"h{s}", room_id=room, viewer_id=viewer,
                                    ts=t0 + s * 1000) for s in range(20, 401, 20)]


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

    await batch(records(topics.host_events, 0, on_air(room, t0)))
    # Partition 0 read 400 s into the show: A opened rice at 2 s and stayed.
    views = dwelling(room, a, t0)
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


@pytest.mark.parametrize("sold_out", [True, False], ids=["sold-out-by-another-worker",
                                                          "control-in-stock"])
async def test_a_dwell_waits_for_another_workers_orders_still_unread(
        settings: Settings, redis: Redis, producer: AIOKafkaProducer, sold_out: bool) -> None:
    """Two workers reading a backlog: A owns partition 0 and has read its viewers 400 s
    into the show; B owns partition 1, whose order that sold the product out a minute in
    it has not read yet. A's timers wait for what B tells of partition 1 (Orders.sweep:
    how far its orders are applied, and when it was last read to its end), and A judges
    by the levels B's stock feed put in the room's stock log."""
    topics = Topics(settings.topic_prefix)
    sends = Sends(producer)
    engagement, pipeline = viewer_path(redis, settings, sends, selling=True)  # A
    await engagement.adopt({0})
    log = StockLogWriter()

    async def to_stock_log(updates: list[StockUpdate]) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            log.queue(pipe, updates)
            await pipe.execute()

    b = Orders(redis=redis, inventory=Inventory(redis), topics=topics, send=sends.send_many,
               feed=StockFeed(to_stock_log, clock=time.monotonic), partitions=settings.partitions)
    room, t0 = f"room-{time.time_ns()}", int(time.time() * 1000)
    a, buyer = treated("a"), treated("b")

    async def a_ticks() -> dict[str, int | float]:
        await engagement.tick()  # reads B's word, then the stock log; settles
        stats = await show_stats(redis, room)
        return {k: v for k, v in stats.items() if k.startswith(("nudges", "suppressed:"))}

    await pipeline.process(records(topics.host_events, 0, on_air(room, t0)))
    assert await b.sweep(owned={1: False}) == 0  # B: partition 1 behind, nothing applied
    await a_ticks()
    views = dwelling(room, a, t0)
    await pipeline.process(records(topics.viewer_events, 0, views))
    await pipeline.drain()
    assert await a_ticks() == {}, "judged before partition 1's orders were read"

    # B applies the order; it tells how far a sweep later (the levels are in the log by
    # then), 60 s: the dwell, due at 182 s, still waits.
    sku = "rice" if sold_out else "oil"
    await b.handle([Part(Record(topics.order_events, 1, 0, b""), [OrderPlaced(
        event_id="op", room_id=room, viewer_id=buyer, order_id="o1", ts=t0 + 60_000,
        items=[OrderItem(sku, 1, 9.9)])], frozenset({room}))])
    await b.sweep(owned={1: False})
    await b.sweep(owned={1: False})
    assert await a_ticks() == {}, "judged past what partition 1 had applied"

    await b.sweep(owned={1: True})  # B has read partition 1 to its end
    decided = await a_ticks()
    if sold_out:
        assert decided == {f"suppressed:{RULE}:sold_out": 1}
    else:
        assert decided.get(f"nudges:{RULE}:treatment") == 1


async def test_a_dwell_waits_for_orders_the_inventory_holds_unapplied(
        settings: Settings, redis: Redis, producer: AIOKafkaProducer) -> None:
    """Every partition is read to its end, but the inventory still holds an order from
    50 s (a backlog's envelope held whole, stream/worker/orderhold.py, or a take being
    applied): A's dwell, due at 182 s, waits for it. The worker once judged a partition's
    timers while its last take was still in the inventory's hands, and one partition's
    engine sent 528-891 nudges too many (`bench/viewer_engine.py`)."""
    held = [0.0]
    engagement, pipeline = viewer_path(redis, settings, Sends(producer),
                                       unapplied=lambda: held[0])
    await engagement.adopt({0, 1})
    room, t0 = f"room-{time.time_ns()}", int(time.time() * 1000) - 3_600_000
    held[0] = t0 + 50_000
    a = treated("a")
    topics = Topics(settings.topic_prefix)
    await pipeline.process(records(topics.host_events, 0, on_air(room, t0)))
    await pipeline.process(records(topics.viewer_events, 0, dwelling(room, a, t0)))
    await pipeline.drain()
    await engagement.tick()
    stats = await show_stats(redis, room)
    assert {k: v for k, v in stats.items() if k.startswith(("nudges", "suppressed:"))} == {}
    held[0] = float("inf")  # applied: rice still in stock, the popup goes out
    await engagement.tick()
    assert (await show_stats(redis, room)).get(f"nudges:{RULE}:treatment") == 1
