"""Inventory scripts on the real Redis against a pure-Python model of the same rules,
written from the description, not the Lua: a stateful fuzz of random ops (the oracle)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from inventory_ops import T0, _eid, triple
from redis.asyncio import Redis

from stream.core.models import (
    OrderCancelled,
    OrderEvent,
    OrderItem,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    StockSet,
)
from stream.local.embedded import EmbeddedStack
from stream.store import keys
from stream.store.inventory import Inventory

pytestmark = pytest.mark.integration

@dataclass
class Sku:
    available: int = 0
    reserved: int = 0
    sold: int = 0
    loaded: int = 0


@dataclass
class Order:
    status: str
    reason: str
    lines: list[tuple[str, int]]
    deadline: int
    amount: float = 0.0
    paid: tuple[str, str] | None = None
    placed: tuple[str, str] = ("", "")
    released: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Model:
    """The inventory rules in plain Python, written from the description, not the Lua."""

    max_qty: int
    ttl_ms: int
    skus: dict[str, Sku] = field(default_factory=dict)
    stock_sets: set[str] = field(default_factory=set)
    orders: dict[str, Order] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    gmv: float = 0.0
    paid_early: set[str] = field(default_factory=set)
    # A bucketed SKU's order gave its units back to their buckets: no re-reserve.
    re_reserve: bool = True

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def stock_set(self, e: StockSet) -> tuple[bool, str, str]:
        if e.event_id in self.stock_sets:
            return False, "", ""
        self.stock_sets.add(e.event_id)
        s = self.skus.setdefault(e.sku, Sku())
        s.loaded += e.qty - s.available
        s.available = e.qty
        return True, "", ""

    def place(self, e: OrderPlaced) -> tuple[bool, str, str]:
        if (o := self.orders.get(e.order_id)) is not None:
            return False, *o.placed
        reason = ""
        for item in e.items:
            if item.sku not in self.skus:
                reason = "unknown_sku"
                break
            if item.qty > self.max_qty:
                reason = "over_limit"
                break
            if self.skus[item.sku].available < item.qty:
                reason = "sold_out"
        lines = [(i.sku, i.qty) for i in e.items]
        if reason:
            self.orders[e.order_id] = Order("rejected", reason, lines, 0,
                                            placed=("rejected", reason))
            self._count(f"orders_rejected:{reason}")
            return True, "rejected", reason
        for sku, qty in lines:
            self.skus[sku].available -= qty
            self.skus[sku].reserved += qty
        amount = sum(i.qty * i.price for i in e.items)
        order = Order("reserved", "", lines, e.ts + self.ttl_ms, amount, placed=("reserved", ""))
        self.orders[e.order_id] = order
        self._count("orders_reserved")
        if e.order_id in self.paid_early:  # the payment came first: confirm at once
            _, status, _ = self.pay(OrderPaid(event_id="x", room_id=e.room_id, ts=e.ts,
                                              viewer_id=e.viewer_id, order_id=e.order_id))
            order.placed = (status, "paid before placed")
            return True, *order.placed
        return True, "reserved", ""

    def pay(self, e: OrderPaid) -> tuple[bool, str, str]:
        o = self.orders.get(e.order_id)
        if o is None:
            self.paid_early.add(e.order_id)
            return True, "rejected", "unknown_order"
        if o.paid is not None:
            return False, *o.paid
        status, reason = "rejected", o.reason
        if o.status == "reserved":
            status, reason = "confirmed", ""
            for sku, qty in o.lines:
                self.skus[sku].reserved -= qty
                self.skus[sku].sold += qty
        elif o.status == "released" and o.reason != "cancelled" and not self.re_reserve:
            reason = "expired"
        elif o.status == "released" and o.reason != "cancelled":
            if all(self.skus[sku].available >= qty for sku, qty in o.lines):
                status, reason = "confirmed", f"re-reserved after {o.reason}"
                for sku, qty in o.lines:
                    self.skus[sku].available -= qty
                    self.skus[sku].sold += qty
            else:
                reason = "expired"
        if status == "confirmed":
            o.status, o.reason = "confirmed", reason
            self._count("orders_paid")
            self.gmv += o.amount
        else:
            self._count(f"payments_rejected:{reason}")
        o.paid = (status, reason)
        return True, status, reason

    def release(self, order_id: str, reason: str) -> tuple[bool, str, str]:
        o = self.orders.get(order_id)
        if o is None:
            return True, "rejected", "unknown_order"
        if reason in o.released:
            return False, *o.released[reason]
        if o.status != "reserved":
            return False, o.status, o.reason
        for sku, qty in o.lines:
            self.skus[sku].reserved -= qty
            self.skus[sku].available += qty
        o.status, o.reason = "released", reason
        o.released[reason] = ("released", reason)
        self._count(f"orders_released:{reason}")
        return True, "released", reason

    def expire(self, now_ms: int, partition: int | None = None) -> list[str]:
        """Release what is due at `now_ms`: on one partition of the order topic (an op's
        own ts expires only its partition's orders), or on all (None)."""
        due = sorted((o.deadline, oid) for oid, o in self.orders.items()
                     if o.status == "reserved" and o.deadline <= now_ms
                     and partition in (None, partition_of(oid)))
        for _, oid in due:
            self.release(oid, "expired")
        return sorted(oid for _, oid in due)

    def apply(self, e: StockSet | OrderEvent) -> tuple[bool, str, str]:
        if isinstance(e, StockSet):
            return self.stock_set(e)
        if isinstance(e, OrderPlaced):
            return self.place(e)
        if isinstance(e, OrderPaid):
            return self.pay(e)
        reason = "cancelled" if isinstance(e, OrderCancelled) else "payment_failed"
        return self.release(e.order_id, reason)


SKUS = ("a", "b", "c")
ORDER_IDS = tuple(f"o{i}" for i in range(6))
FUZZ_PARTITIONS = 2


def partition_of(order_id: str) -> int:
    """The order topic's partition an order's events are on: fixed per order, as the
    gateway's key by viewer makes it (every order here has the same viewer, so the fuzz
    spreads them by order id instead)."""
    return ORDER_IDS.index(order_id) % FUZZ_PARTITIONS


def event_partition(e: StockSet | OrderEvent) -> int:
    return 0 if isinstance(e, StockSet) else partition_of(e.order_id)
FUZZ_MAX_QTY = 2   # lines of qty 3 then hit over_limit
FUZZ_TTL_MS = 8_000  # each operation moves the clock 1 s: reservations do expire

Op = tuple[Any, ...]
line_sku = st.sampled_from(("a", "a", "a", "b", "b", "b", "c"))   # "c" is rarely stocked
line_qty = st.sampled_from((1, 1, 1, 2, 2, 3))
order_id = st.sampled_from(ORDER_IDS)
place = st.tuples(st.just("place"), order_id,
                  st.lists(line_sku, min_size=1, max_size=2, unique=True),
                  st.lists(line_qty, min_size=2, max_size=2))
ops = st.one_of(
    place, place, place,
    st.tuples(st.just("stock"), st.sampled_from(SKUS), st.integers(0, 6)),
    st.tuples(st.just("pay"), order_id),
    st.tuples(st.just("pay"), order_id),
    st.tuples(st.just("cancel"), order_id),
    st.tuples(st.just("payment_failed"), order_id),
    st.tuples(st.just("expire"), st.integers(0, 2 * FUZZ_TTL_MS)),
    st.tuples(st.just("dup"), st.integers(0, 10_000)),
    st.tuples(st.just("dup"), st.integers(0, 10_000)),
)
# Most scripts start with stock on the shelf, else nearly every order is `unknown_sku`.
opening = st.tuples(st.tuples(st.just("stock"), st.just("a"), st.integers(0, 8)),
                    st.tuples(st.just("stock"), st.just("b"), st.integers(0, 8))).map(list)
scripts = st.builds(lambda head, tail: head + tail, opening,
                    st.lists(ops, min_size=15, max_size=60))


def build(op: Op, room: str, now: int, *, buckets: int | None = None) -> StockSet | OrderEvent:
    kind = op[0]
    if kind == "stock":
        return StockSet(event_id=_eid(), room_id=room, ts=now, sku=op[1], qty=op[2],
                        buckets=buckets)
    if kind == "place":
        _, oid, skus, qtys = op
        return OrderPlaced(event_id=_eid(), room_id=room, ts=now, viewer_id="v", order_id=oid,
                           items=[OrderItem(sku=s, qty=q, price=1.5)
                                  for s, q in zip(skus, qtys, strict=False)])
    common = {"event_id": _eid(), "room_id": room, "ts": now, "viewer_id": "v",
              "order_id": op[1]}
    if kind == "pay":
        return OrderPaid(**common)
    if kind == "cancel":
        return OrderCancelled(**common)
    return OrderPaymentFailed(**common, reason="declined")


@dataclass
class Step:
    """One event of a batch and what the model says of it."""

    where: str
    event: StockSet | OrderEvent
    want: tuple[bool, str, str]
    expired: list[str]  # what its event ts expires first, by the model
    before: dict[str, tuple[int, int, int]]  # levels after those expiries
    after: dict[str, tuple[int, int, int]]  # levels after the event


def levels_of(model: Model) -> dict[str, tuple[int, int, int]]:
    return {k: (s.available, s.reserved, s.sold) for k, s in model.skus.items()}


async def run_ops(redis_url: str, script: list[Op], *, buckets: int | None = None,
                  cuts: list[int] | None = None) -> None:
    """Replay `script` on Redis and on the model; compare after every batch (orders on two
    partitions of the order topic, `partition_of`). With `buckets`
    every SKU is split into that many buckets: the same outcomes, but no re-reserve, and
    expiry by the sweeper only. `cuts`: the sizes of the batches (cycled; 1 each if none),
    each applied as the worker applies one (one script call; `expire` ops end a batch)."""
    redis = Redis.from_url(redis_url)
    try:
        room = f"fuzz-{uuid.uuid4().hex[:12]}"
        inv = Inventory(redis, reservation_ttl_ms=FUZZ_TTL_MS, max_qty_per_line=FUZZ_MAX_QTY)
        model = Model(max_qty=FUZZ_MAX_QTY, ttl_ms=FUZZ_TTL_MS, re_reserve=buckets is None)
        now = T0
        history: list[StockSet | OrderEvent] = []
        sizes = itertools.cycle(cuts or [1])
        size, batch = next(sizes), []

        async def flush() -> None:
            if not batch:
                return
            outs, summed = await inv.apply(room, [b.event for b in batch], ts=now,
                                           partitions=[event_partition(b.event) for b in batch])
            for b, out in zip(batch, outs, strict=True):
                assert triple(out) == b.want, f"{b.where}: {b.event}"
                assert sorted(oid for oid, _ in out.expired) == b.expired, b.where
                assert all(triple(x) == (True, "released", "expired") and x.viewer_id == "v"
                           for _, x in out.expired), b.where
                if out.expired:
                    hypothesis.event(f"expired by an event's ts, batch of {len(batch)}")
                # The last expiry to touch a SKU shows its level after them all.
                last = {u.sku: u for _, x in out.expired for u in x.levels}
                for level in last.values():
                    assert (level.available, level.reserved, level.sold) == (
                        b.before[level.sku]), b.where
                for level in out.levels:
                    assert (level.available, level.reserved, level.sold) == (
                        b.after[level.sku]), b.where
                hypothesis.event(f"{type(b.event).__name__} {out.status} {out.reason}".strip())
            for level in summed:  # bucketed SKUs' sums, after the batch's moves
                assert (level.available, level.reserved, level.sold) == (
                    levels_of(model)[level.sku]), batch[-1].where
            batch.clear()
            audit = await inv.audit(room)
            assert audit.problems == [] and audit.oversold == 0, (where, audit)
            levels = await inv.levels(room)
            assert all(min(u.available, u.reserved, u.sold) >= 0 for u in levels), where

        for step, op in enumerate(script):
            where = f"step {step}: {op}"
            if op[0] == "expire":
                await flush()
                now += op[1]
                got = []
                for partition in range(FUZZ_PARTITIONS):  # the sweeper does each partition
                    due, _ = await inv.expire_and_follow(room, now_ms=now, partition=partition)
                    got += [(oid, out.viewer_id, out) for oid, out in due]
                assert all(o.fresh and o.status == "released" for _, _, o in got), where
                assert all(viewer == "v" for _, viewer, _ in got), where
                assert sorted(oid for oid, _, _ in got) == model.expire(now), where
                if got:
                    hypothesis.event("expired some")
                continue
            if op[0] == "dup":
                if not history:
                    continue
                event = history[op[1] % len(history)]
            else:
                now += 1000
                event = build(op, room, now, buckets=buckets)
                history.append(event)
            # The room's script expires what is due before each order event (not a load), on
            # the event's partition only; bucketed orders wait for the sweeper.
            expired = (model.expire(event.ts - 1, event_partition(event))
                       if buckets is None and not isinstance(event, StockSet) else [])
            before = levels_of(model)
            want = model.apply(event)
            batch.append(Step(where, event, want, expired, before, levels_of(model)))
            if len(batch) >= size:
                await flush()
                size = next(sizes)
        await flush()
        final = {u.sku: (u.available, u.reserved, u.sold) for u in await inv.levels(room)}
        assert final == {k: (s.available, s.reserved, s.sold) for k, s in model.skus.items()}
        raw = {k.decode(): float(v) for k, v in (await redis.hgetall(keys.stats(room))).items()}
        # The host's view splits the same fresh outcomes by minute (and segment, none here).
        by_minute = {k: v for k, v in raw.items() if k.startswith("m:")}
        counts = {k: int(v) for k, v in raw.items() if k != "gmv" and k not in by_minute}
        assert counts == model.stats
        assert raw.get("gmv", 0) == pytest.approx(model.gmv)
        for name, total in (("orders", "orders_reserved"), ("paid", "orders_paid"),
                            ("gmv", "gmv")):
            assert sum(v for k, v in by_minute.items() if k.endswith(f":{name}")) == (
                pytest.approx(raw.get(total, 0))), name
    finally:
        await redis.aclose()


@hsettings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts, cuts=st.lists(st.integers(1, 8), min_size=1, max_size=8))
def test_inventory_matches_the_model(stack: EmbeddedStack, script: list[Op],
                                     cuts: list[int]) -> None:
    """Random operations, duplicates included, in batches of random sizes (deadlines pass
    within a batch): Redis agrees with the model at every step."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_ops(stack.redis_url, script, cuts=cuts))
    finally:
        loop.close()


@hsettings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts)
def test_bucketed_inventory_matches_the_model(stack: EmbeddedStack, script: list[Op]) -> None:
    """The same with every SKU split into 3 buckets: an order borrows from the others when
    its own is dry, so it is refused only when the SKU as a whole is short."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_ops(stack.redis_url, script, buckets=3))
    finally:
        loop.close()
