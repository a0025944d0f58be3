"""A backlog's orders across takes: the inventory applies each call's orders merged by
event time (`orders._merged`), and a take's orders past the worker's order partitions
still behind wait for them (stream/worker/orderhold.py), so which buyer gets the last
unit does not hang on which partition a take happened to hold. Before, it did: the cause
of `bench/viewer_engine.py`'s off runs (README, Nudges the host can trust, "Stock at fire
time", session 14). And a held record is not marked consumed: a crash reads it again."""

from __future__ import annotations

import asyncio

import pytest
from helpers import collector
from redis.asyncio import Redis

from stream.core.batch import Part, Record
from stream.core.codec import encode
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
from stream.store.ledger import Ledger
from stream.worker.orders import Orders
from stream.worker.pipeline import Pipeline
from stream.worker.stockfeed import StockFeed

pytestmark = pytest.mark.integration

TOPICS = Topics("takes.")
ROOM = "take-room"
T0 = 1_600_000_000_000


def at(cls: type[Event], s: int, viewer: str, order: str, **more: object) -> Event:
    return cls(event_id=f"{order}-{s}", room_id=ROOM, ts=T0 + s * 1000,  # type: ignore[call-arg]
               viewer_id=viewer, order_id=order, **more)


async def test_a_take_does_not_sell_a_unit_an_unread_release_frees_first(db: Redis) -> None:
    """One unit. In event time: B's order at 50 s takes it, B's payment fails at 65 s and
    frees it, A's order at 70 s takes it. Read as a backlog: the first take holds A's
    order and B's order but not yet B's failure (B's partition is behind). A's order
    waits for it; without the wait A was refused, the unit went to nobody and the stock
    book said one left at 200 s, where event time says none (dwell nudges went out that
    would be suppressed as sold out)."""
    results: list[tuple[int, OrderResult]] = []

    async def publish(updates: object) -> None:
        return None

    book = StockBook()
    behind: set[int] = set()
    orders = Orders(redis=db, inventory=Inventory(db), feed=StockFeed(publish, clock=lambda: 0.0),
                    send=collector(results), topics=TOPICS, partitions=2, stock=book,
                    behind=lambda: behind)
    pa, pb = partition_for("v1", 2), partition_for("v2", 2)
    assert pa != pb
    rice = [OrderItem("rice", 1, 9.9)]

    def on(p: int, offset: int, event: Event) -> Part:
        return Part(Record(TOPICS.order_events, p, offset, b""), [event], frozenset({ROOM}))

    await orders.handle([Part(Record(TOPICS.host_events, 0, 0, b""), [StockSet(
        event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=1)], frozenset({ROOM}))])
    behind.add(pb)
    await orders.handle([on(pb, 0, at(OrderPlaced, 50, "v2", "b1", items=rice)),
                         on(pa, 0, at(OrderPlaced, 70, "v1", "a1", items=rice))])
    assert [r.order_id for _, r in results] == ["b1"]  # A's order waits for partition B
    assert orders.held_from() == {(TOPICS.order_events, pa): 0}
    behind.clear()
    await orders.handle([on(pb, 1, at(OrderPaymentFailed, 65, "v2", "b1",
                                      reason="card_declined"))])
    assert orders.held_from() == {}
    a1 = [(r.status, r.reason) for _, r in results if r.order_id == "a1"]
    assert a1 == [("reserved", None)], "A's order, after B's failure in event time"
    assert book.available_at(ROOM, "rice", T0 + 200_000) == 0


async def test_a_held_order_is_not_marked_consumed(db: Redis) -> None:
    """The pipeline's consumed mark (where a new owner starts, with faust's commit) stops
    short of the first held record, so a worker killed while it holds one loses none."""
    sends: list[tuple[int, OrderResult]] = []

    async def send(topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> object:
        return None

    async def publish(updates: object) -> None:
        return None

    topics = Topics(f"held{id(db)}.")
    pa, pb = partition_for("v1", 2), partition_for("v2", 2)
    orders = Orders(redis=db, inventory=Inventory(db), feed=StockFeed(publish, clock=lambda: 0.0),
                    send=collector(sends), topics=topics, partitions=2, behind=lambda: [pb])
    ledger = Ledger(db)
    pipeline = Pipeline(topics=topics, ledger=ledger, send=send, first=[orders],
                        held=orders.held_from)
    rice = [OrderItem("rice", 1, 9.9)]
    await pipeline.process([
        Record(topics.host_events, 0, 0, encode([StockSet(event_id="s", room_id=ROOM, ts=T0,
                                                           sku="rice", qty=5)])),
        Record(topics.order_events, pb, 3, encode([at(OrderPlaced, 50, "v2", "b1",
                                                      items=rice)])),
        Record(topics.order_events, pa, 7, encode([at(OrderPlaced, 51, "v1", "a1",
                                                      items=rice)])),
        Record(topics.order_events, pa, 8, encode([at(OrderPlaced, 90, "v1", "a2",
                                                      items=rice)]))])
    await pipeline.drain()
    consumed = await ledger.consumed()
    # 51 s is within the 2 s slack of B's 50 s, 90 s is not: a2 (offset 8) waits.
    assert orders.held_from() == {(topics.order_events, pa): 8}
    assert consumed[f"{topics.order_events}:{pa}"] == 7
    assert consumed[f"{topics.order_events}:{pb}"] == 3
    assert len(sends) == 2  # b1's and a1's results; a2's waits


async def test_takes_beside_each_other_keep_every_held_record(db: Redis) -> None:
    """The sweep takes the held state (`handle([])`) beside the pipeline's batches. Two
    takes of the same state, each writing its own after, lost the records the other held:
    an order's place was never applied and its pay came out unknown_order."""
    results: list[tuple[int, OrderResult]] = []

    async def publish(updates: object) -> None:
        return None

    topics = Topics(f"beside{id(db)}.")
    behind = {partition_for("v2", 2)}
    orders = Orders(redis=db, inventory=Inventory(db), feed=StockFeed(publish, clock=lambda: 0.0),
                    send=collector(results), topics=topics, partitions=2,
                    behind=lambda: behind)
    pa = partition_for("v1", 2)
    rice = [OrderItem("rice", 1, 9.9)]

    def on(offset: int, event: Event) -> Part:
        return Part(Record(topics.order_events, pa, offset, b""), [event], frozenset({ROOM}))

    await orders.handle([Part(Record(topics.host_events, 0, 0, b""), [StockSet(
        event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=5)], frozenset({ROOM}))])
    await orders.handle([on(0, at(OrderPlaced, 70, "v1", "a1", items=rice))])
    assert orders.held_from() == {(topics.order_events, pa): 0}
    # The batch's take first, then the sweep's, started together.
    await asyncio.gather(orders.handle([on(1, at(OrderPlaced, 80, "v1", "a2", items=rice))]),
                         orders.handle([]))
    behind.clear()
    await orders.handle([])
    assert sorted((r.order_id, r.status) for _, r in results) == [
        ("a1", "reserved"), ("a2", "reserved")]


async def test_a_replayed_load_does_not_say_its_level_held_from_its_start(db: Redis) -> None:
    """The gateway applies a stock load before its 202; the worker reads the same event
    on the host topic later, here after a backlog's orders: one unit taken at 50 s and
    freed at 300 s. The replay's answer is the level now (1 left, the newest version).
    Stamped with the load's own ts it told the stock book one unit was left from the
    show's start, so at 100 s too, where event time says none."""
    results: list[tuple[int, OrderResult]] = []

    async def publish(updates: object) -> None:
        return None

    book = StockBook()
    orders = Orders(redis=db, inventory=Inventory(db), feed=StockFeed(publish, clock=lambda: 0.0),
                    send=collector(results), topics=TOPICS, partitions=2, stock=book)
    load = StockSet(event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=1)
    await Inventory(db).load([load])  # the gateway's, before its 202
    p = partition_for("v2", 2)
    rice = [OrderItem("rice", 1, 9.9)]
    await orders.handle([
        Part(Record(TOPICS.order_events, p, 0, b""), [at(OrderPlaced, 50, "v2", "b1", items=rice)],
             frozenset({ROOM})),
        Part(Record(TOPICS.order_events, p, 1, b""),
             [at(OrderPaymentFailed, 300, "v2", "b1", reason="card_declined")], frozenset({ROOM}))])
    await orders.handle([Part(Record(TOPICS.host_events, 0, 0, b""), [load], frozenset({ROOM}))])
    assert book.available_at(ROOM, "rice", T0 + 100_000) == 0
    assert book.available_at(ROOM, "rice", T0 + 400_000) == 1
