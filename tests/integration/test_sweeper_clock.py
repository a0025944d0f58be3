"""The sweeper expires reservations on inventory's own clock (stream/store/clocks.py):
viewer events read ahead of the order topic do not expire an order whose payment is
still on its way; a room gone quiet still expires on the wall. And a partition read
ahead of another, in one call or across calls, expires none of the other's orders: each
partition of the order topic has its own deadlines and its own clock."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from helpers import collector
from redis.asyncio import Redis

from stream.core.batch import Part, Record
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
from stream.store import keys
from stream.store.clocks import RoomClocks
from stream.store.inventory import Inventory
from stream.worker.orders import Orders
from stream.worker.stockfeed import StockFeed

pytestmark = pytest.mark.integration

TOPICS = Topics("sweep.")
ROOM = "sweep-room"
T0 = 1_600_000_000_000  # event time, far from the wall clock below
TTL_MS = 60_000


def part(topic: str, offset: int, *events: Event, partition: int = 0) -> Part:
    return Part(Record(topic, partition, offset, b""), list(events), frozenset({ROOM}))


async def test_views_ahead_of_orders_do_not_expire_a_reservation(db: Redis) -> None:
    wall = [1_000_000.0]  # seconds, moved by hand
    results: list[tuple[int, OrderResult]] = []

    async def publish(updates: object) -> None:
        return None

    orders = Orders(redis=db, inventory=Inventory(db, reservation_ttl_ms=TTL_MS),
                    feed=StockFeed(publish, clock=lambda: wall[0]), send=collector(results),
                    topics=TOPICS, partitions=1, clock=lambda: wall[0])
    await orders.handle([
        part(TOPICS.host_events, 0, StockSet(event_id="s", room_id=ROOM, ts=T0, sku="rice",
                                              qty=5)),
        part(TOPICS.order_events, 0, OrderPlaced(
            event_id="o", room_id=ROOM, ts=T0 + 1_000, viewer_id="v1", order_id="o1",
            items=[OrderItem("rice", 1, 9.9)]))])
    assert [r.status for _, r in results] == ["reserved"]

    # The viewer topic is read 10 minutes of show ahead; the order topic has not moved.
    await orders.handle([part(TOPICS.viewer_events, 0, ViewerHeartbeat(
        event_id="h", room_id=ROOM, ts=T0 + 600_000, viewer_id="v2"))])
    wall[0] += 1
    assert await orders.sweep(owned={0: True}) == 0
    # The room's clock (the host's view) did follow the views.
    room_now = await RoomClocks(db).now(ROOM, wall_now_ms=int(wall[0] * 1000))
    assert room_now is not None and room_now >= T0 + 600_000

    # Quiet on the order topic for longer than the TTL of wall time: it expires.
    wall[0] += TTL_MS / 1000
    assert await orders.sweep(owned={0: True}) == 1
    assert [(r.status, r.reason) for _, r in results][-1] == ("released", "expired")


async def test_a_partition_read_ahead_in_one_call_does_not_expire_another(db: Redis) -> None:
    """A worker that starts behind a show reads the backlog round-robin across partitions:
    partition 0's payment 600 s after its order came, in one call, before partition 1's
    payment_failed 2 s after its own. When each op expired what its ts had passed in the
    whole room, in record order that was o2, due 118 s after its payment_failed."""
    orders, results, _, p1, p2 = await rice_on_two_partitions(db)
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 10, "v1", "o1", items=[RICE]), partition=p1),
        part(TOPICS.order_events, 0, at(OrderPlaced, 88, "v2", "o2", items=[RICE]), partition=p2),
        part(TOPICS.order_events, 1, at(OrderPaid, 610, "v1", "o1"), partition=p1),
        part(TOPICS.order_events, 1, at(OrderPaymentFailed, 90, "v2", "o2",
                                        reason="card_declined"), partition=p2)])
    o2 = [(p, r.status, r.reason) for p, r in results if r.order_id == "o2"]
    assert o2 == [(p2, "reserved", None), (p2, "released", "payment_failed")]
    o1 = [(p, r.status, r.reason) for p, r in results if r.order_id == "o1"]
    assert o1 == [(p1, "reserved", None), (p1, "released", "expired"),
                  (p1, "confirmed", "re-reserved after expired")]


def make_orders(db: Redis, results: list[tuple[int, OrderResult]], wall: list[float], *,
                ttl_ms: int = TTL_MS * 2, partitions: int = 2) -> Orders:
    async def publish(updates: object) -> None:
        return None

    return Orders(redis=db, inventory=Inventory(db, reservation_ttl_ms=ttl_ms),
                  feed=StockFeed(publish, clock=lambda: wall[0]), send=collector(results),
                  topics=TOPICS, partitions=partitions, clock=lambda: wall[0])


def at(cls: type[Event], s: int, viewer: str, order: str, **more: object) -> Event:
    return cls(event_id=f"{order}-{s}", room_id=ROOM, ts=T0 + s * 1000,  # type: ignore[call-arg]
               viewer_id=viewer, order_id=order, **more)


RICE = OrderItem("rice", 1, 9.9)


class TwoPartitions(NamedTuple):
    orders: Orders
    results: list[tuple[int, OrderResult]]  # (partition, result) as sent
    wall: list[float]  # seconds, moved by hand
    p1: int  # v1's partition
    p2: int  # v2's


async def rice_on_two_partitions(db: Redis) -> TwoPartitions:
    """A worker's `Orders` on a room with 5 rice loaded, and the partitions (of 2) of
    viewers v1 and v2, as the gateway keys them: not the same one."""
    results: list[tuple[int, OrderResult]] = []
    wall = [1_000_000.0]
    orders = make_orders(db, results, wall)
    await orders.handle([part(TOPICS.host_events, 0, StockSet(
        event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=5))])
    p1, p2 = partition_for("v1", 2), partition_for("v2", 2)
    assert p1 != p2
    return TwoPartitions(orders, results, wall, p1, p2)


@pytest.mark.parametrize("settled", ["payment_failed", "paid"])
async def test_a_partition_read_ahead_across_calls_does_not_expire_another(
        db: Redis, settled: str) -> None:
    """The backlog split over two calls: the first holds partition 1's order and its
    payment 600 s later, and partition 2's order; the second, later, partition 2's
    payment or payment_failed 2 s after its order, before its deadline. Neither the first
    call's late payment nor a sweep between the calls may expire o2: partition 2 has not
    been read past 88 s. On one deadlines zset and one clock per room, both did."""
    orders, results, wall, p1, p2 = await rice_on_two_partitions(db)
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 10, "v1", "o1", items=[RICE]), partition=p1),
        part(TOPICS.order_events, 0, at(OrderPlaced, 88, "v2", "o2", items=[RICE]), partition=p2),
        part(TOPICS.order_events, 1, at(OrderPaid, 610, "v1", "o1"), partition=p1)])
    wall[0] += 1
    assert await orders.sweep(owned={p1: True, p2: True}) == 0
    last = (at(OrderPaymentFailed, 90, "v2", "o2", reason="card_declined")
            if settled == "payment_failed" else at(OrderPaid, 90, "v2", "o2"))
    await orders.handle([part(TOPICS.order_events, 1, last, partition=p2)])
    o2 = [(p, r.status, r.reason) for p, r in results if r.order_id == "o2"]
    assert o2 == [(p2, "reserved", None),
                  (p2, "released", "payment_failed") if settled == "payment_failed"
                  else (p2, "confirmed", None)]
    o1 = [(p, r.status, r.reason) for p, r in results if r.order_id == "o1"]
    assert o1 == [(p1, "reserved", None), (p1, "released", "expired"),
                  (p1, "confirmed", "re-reserved after expired")]


async def test_each_partition_expires_on_its_own_clock(db: Redis) -> None:
    """The sweeper expires partition 2's order once partition 2's own clock (its newest
    order ts, plus the wall since) passes the deadline, however far partition 1 has read
    (600 s past it)."""
    orders, results, wall, p1, p2 = await rice_on_two_partitions(db)
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 88, "v2", "o2", items=[RICE]), partition=p2),
        part(TOPICS.order_events, 0, at(OrderPlaced, 690, "v1", "o1", items=[RICE]),
             partition=p1),
        part(TOPICS.order_events, 1, at(OrderPaid, 700, "v1", "o1"), partition=p1)])
    both = {p1: True, p2: True}
    assert await orders.sweep(owned=both) == 0  # p2's clock is at 88 s, o2 due at 208
    wall[0] += 119
    assert await orders.sweep(owned=both) == 0  # 88 + 119 = 207 s
    wall[0] += 2
    assert await orders.sweep(owned=both) == 1
    assert [(r.order_id, r.status, r.reason) for _, r in results][-1] == (
        "o2", "released", "expired")
    assert await db.zcard(keys.deadlines(ROOM, p2)) == 0


async def test_the_single_zset_of_before_is_swept(db: Redis) -> None:
    """A show running across the upgrade: its older reservations are in the room's one
    deadlines zset. The sweeper still expires them, on the earliest partition clock, and
    drops the entries of orders paid since (their pay removed nothing there)."""
    orders, results, wall, p1, p2 = await rice_on_two_partitions(db)
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 10, "v1", "o1", items=[RICE]), partition=p1),
        part(TOPICS.order_events, 0, at(OrderPlaced, 20, "v2", "o2", items=[RICE]), partition=p2)])
    # What the old code kept: both deadlines in the one zset.
    for oid, p in (("o1", p1), ("o2", p2)):
        score = await db.zscore(keys.deadlines(ROOM, p), oid)
        assert score is not None
        await db.zrem(keys.deadlines(ROOM, p), oid)
        await db.zadd(keys.legacy_deadlines(ROOM), {oid: score})
    await orders.handle([part(TOPICS.order_events, 1, at(OrderPaid, 30, "v1", "o1"),
                              partition=p1)])
    # p1 at 30 s, p2 at 20 s: the legacy zset waits for the earlier one.
    wall[0] += 119
    assert await orders.sweep(owned={p1: True, p2: True}) == 0  # 20 + 119 = 139 s; o2 due at 140
    wall[0] += 1
    assert await orders.sweep(owned={p1: True, p2: True}) == 1
    assert [(r.order_id, r.status, r.reason) for _, r in results][-1] == (
        "o2", "released", "expired")
    assert await db.zcard(keys.legacy_deadlines(ROOM)) == 0


async def test_a_partition_not_read_to_its_end_does_not_expire_on_the_wall(db: Redis) -> None:
    """Partition 2's owner goes down (or falls behind) after reading o2's order at 88 s;
    o2's payment at 90 s is the next record there, unread. However long the wall runs,
    the sweeper moves p2's clock on only up to when p2 was last read to its end, so o2
    is still reserved when the payment is applied. Before, p2's clock ran on with the
    wall and the customer got `re-reserved after expired`. p1, read to its end all
    along, waits for p2 too (the next test says why), and expires on the wall once p2 is
    read to its end again."""
    orders, results, wall, p1, p2 = await rice_on_two_partitions(db)
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 10, "v1", "o1", items=[RICE]), partition=p1),
        part(TOPICS.order_events, 0, at(OrderPlaced, 88, "v2", "o2", items=[RICE]),
             partition=p2)])
    assert await orders.sweep(owned={p1: True, p2: True}) == 0
    wall[0] += 30
    assert await orders.sweep(owned={p1: True}) == 0  # p2: down from here on
    wall[0] += 600  # p1 at 10 + 630 s, past o1's 130 s; p2 at 88 s, not o2's 208 s
    assert await orders.sweep(owned={p1: True}) == 0
    assert await orders.sweep() == 0  # no worker has read any to the end: no wall at all
    await orders.handle([part(TOPICS.order_events, 1, at(OrderPaid, 90, "v2", "o2"),
                              partition=p2)])
    assert await orders.sweep(owned={p1: True, p2: True}) == 1
    assert [(r.order_id, r.status, r.reason) for _, r in results] == [
        ("o1", "reserved", None), ("o2", "reserved", None), ("o2", "confirmed", None),
        ("o1", "released", "expired")]


async def test_wall_time_frees_no_unit_before_an_unread_order(db: Redis) -> None:
    """One unit, reserved by o1 on p1 at 10 s (due at 130 s). p2 is behind: applied to
    50 s, its next record o3 at 100 s, unread. p1 is read to its end and the wall is
    far past 130 s, but in event time o1 still holds the unit at 100 s, so o3 is refused.
    Before, the sweeper expired o1 on the wall while p2 was behind and o3 got the unit:
    a worker reading a backlog sold the units of due reservations to earlier orders."""
    results: list[tuple[int, OrderResult]] = []
    wall = [1_000_000.0]
    orders = make_orders(db, results, wall)
    await orders.handle([part(TOPICS.host_events, 0, StockSet(
        event_id="s", room_id=ROOM, ts=T0, sku="rice", qty=1))])
    p1, p2 = partition_for("v1", 2), partition_for("v2", 2)
    await orders.handle([
        part(TOPICS.order_events, 0, at(OrderPlaced, 10, "v1", "o1", items=[RICE]), partition=p1),
        part(TOPICS.order_events, 0, at(OrderPlaced, 50, "v2", "o2", items=[RICE]),
             partition=p2)])  # sold out: o1 holds the unit
    assert await orders.sweep(owned={p1: True, p2: False}) == 0
    wall[0] += 600
    assert await orders.sweep(owned={p1: True, p2: False}) == 0
    await orders.handle([part(TOPICS.order_events, 1, at(OrderPlaced, 100, "v2", "o3",
                                                         items=[RICE]), partition=p2)])
    assert await orders.sweep(owned={p1: True, p2: True}) == 1
    assert [(r.order_id, r.status, r.reason) for _, r in results] == [
        ("o1", "reserved", None), ("o2", "rejected", "sold_out"),
        ("o3", "rejected", "sold_out"), ("o1", "released", "expired")]


async def test_a_mark_moves_the_clock_only_up_to_its_wall_time(db: Redis) -> None:
    """Read to the end 100 s of wall after o2's order, then not: p2's clock is the order's
    88 s plus those 100 s, however long after the sweep runs; a new mark moves it on."""
    orders, results, wall, _, p2 = await rice_on_two_partitions(db)
    await orders.handle([part(TOPICS.order_events, 0, at(
        OrderPlaced, 88, "v2", "o2", items=[RICE]), partition=p2)])
    wall[0] += 100
    assert await orders.sweep(owned={p2: True}) == 0  # 188 s; o2 is due at 208 s
    wall[0] += 500
    assert await orders.sweep() == 0  # still 188 s
    nows = await RoomClocks(db).inventory_nows(
        [ROOM], wall_now_ms=int(wall[0] * 1000),
        read={p2: int((wall[0] - 500) * 1000)})
    assert nows[ROOM][0] == {p2: T0 + 188_000}
    assert await orders.sweep(owned={p2: True}) == 1  # read to the end again: 688 s
    assert [(r.order_id, r.status, r.reason) for _, r in results][-1] == (
        "o2", "released", "expired")
