"""Inventory scripts on the real Redis: golden cases per path, then a stateful fuzz
against a pure-Python model of the same rules (the oracle)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import msgspec
import pytest
from helpers import INVENTORY_TTL_MS
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
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
from stream.store.inventory import Inventory, Outcome

pytestmark = pytest.mark.integration

T0 = 1_750_000_000_000
TTL_MS = INVENTORY_TTL_MS  # the `inv` fixture's (tests/conftest.py)
_ids = itertools.count()


# --------------------------------------------------------------------------- helpers

def _eid() -> str:
    return f"ev{next(_ids)}-{uuid.uuid4().hex[:8]}"


def stock_set(room: str, sku: str, qty: int, *, event_id: str | None = None) -> StockSet:
    return StockSet(event_id=event_id or _eid(), room_id=room, ts=T0, sku=sku, qty=qty,
                    name=f"name-{sku}", price=9.5)


def placed(room: str, order_id: str, *lines: tuple[str, int], ts: int = T0,
           viewer: str = "v1", event_id: str | None = None) -> OrderPlaced:
    return OrderPlaced(event_id=event_id or _eid(), room_id=room, ts=ts, viewer_id=viewer,
                       order_id=order_id,
                       items=[OrderItem(sku=s, qty=q, price=10.0) for s, q in lines])


def paid(room: str, order_id: str, *, event_id: str | None = None) -> OrderPaid:
    return OrderPaid(event_id=event_id or _eid(), room_id=room, ts=T0, viewer_id="v1",
                     order_id=order_id)


def cancelled(room: str, order_id: str) -> OrderCancelled:
    return OrderCancelled(event_id=_eid(), room_id=room, ts=T0, viewer_id="v1",
                          order_id=order_id)


def payment_failed(room: str, order_id: str) -> OrderPaymentFailed:
    return OrderPaymentFailed(event_id=_eid(), room_id=room, ts=T0, viewer_id="v1",
                              order_id=order_id, reason="card declined")


async def apply_all(inv: Inventory, room: str,
                    events: list[StockSet | OrderEvent]) -> list[Outcome]:
    """Apply `events` of one room in order, in one script call, as the worker does a batch."""
    return await inv.run(room, [inv.op(e) for e in events], ts=T0)


async def apply(inv: Inventory, event: StockSet | OrderEvent) -> Outcome:
    [out] = await apply_all(inv, event.room_id, [event])
    return out


async def expire(inv: Inventory, room: str, now_ms: int) -> list[tuple[str, str, Outcome]]:
    """(order_id, viewer_id, outcome) per order the sweep looked at."""
    return [(oid, out.viewer_id, out) for oid, out in await inv.expire_due(room, now_ms=now_ms)]


async def stock(inv: Inventory, room: str) -> dict[str, tuple[int, int, int]]:
    """sku -> (available, reserved, sold)."""
    return {u.sku: (u.available, u.reserved, u.sold) for u in await inv.levels(room)}


async def dump(redis: Redis, room: str) -> dict[str, Any]:
    """Every key of the room with its full content: a replay must change none of it."""
    out: dict[str, Any] = {}
    async for raw in redis.scan_iter(match=f"{keys.PREFIX}:{{{room}}}:*", count=1000):
        key = raw.decode()
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "set":
            out[key] = await redis.smembers(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await redis.get(key)
    return out


async def stats(redis: Redis, room: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.stats(room))).items()}


async def assert_sound(inv: Inventory, room: str) -> None:
    audit = await inv.audit(room)
    assert audit.problems == [] and audit.oversold == 0, audit


def triple(outcome: Outcome) -> tuple[bool, str, str]:
    return outcome.fresh, outcome.status, outcome.reason


# --------------------------------------------------------------------------- golden cases

async def test_stock_set_sets_available_and_replay_changes_nothing(inv: Inventory,
                                                                   room: str) -> None:
    first = stock_set(room, "a", 10)
    out = await apply(inv, first)
    assert triple(out) == (True, "", "")
    assert [(u.sku, u.available, u.reserved, u.sold) for u in out.levels] == [("a", 10, 0, 0)]
    before = await dump(inv.redis, room)
    again = await apply(inv, first)
    assert triple(again) == (False, "", "")
    assert again.levels[0].version == out.levels[0].version
    assert await dump(inv.redis, room) == before

    # A new stock.set sets `available`; `loaded` follows by the delta, reservations stay.
    assert (await apply(inv, placed(room, "o1", ("a", 3)))).status == "reserved"
    await apply(inv, stock_set(room, "a", 4))
    assert await stock(inv, room) == {"a": (4, 3, 0)}
    assert await inv.redis.hget(keys.stock_prefix(room) + "a", "loaded") == b"7"
    await apply(inv, stock_set(room, "a", 0))
    assert await stock(inv, room) == {"a": (0, 3, 0)}
    await assert_sound(inv, room)
    meta = await inv.redis.hmget(keys.stock_prefix(room) + "a", "name", "price")
    assert meta == [b"name-a", b"9.5"]


async def test_place_reserves_and_replays_return_the_first_outcome(inv: Inventory,
                                                                   room: str) -> None:
    await apply(inv, stock_set(room, "a", 5))
    await apply(inv, stock_set(room, "b", 5))
    event = placed(room, "o1", ("a", 2), ("b", 3))
    out = await apply(inv, event)
    assert triple(out) == (True, "reserved", "")
    assert {(u.sku, u.available, u.reserved, u.sold) for u in out.levels} == {
        ("a", 3, 2, 0), ("b", 2, 3, 0)}
    assert await inv.redis.zscore(keys.deadlines(room, 0), "o1") == T0 + TTL_MS
    before = await dump(inv.redis, room)

    # Redelivery (same event) and a client retry with a new event_id (same order_id).
    assert triple(await apply(inv, event)) == (False, "reserved", "")
    retry = placed(room, "o1", ("a", 1))
    assert triple(await apply(inv, retry)) == (False, "reserved", "")
    assert await dump(inv.redis, room) == before
    assert (await stats(inv.redis, room))["orders_reserved"] == "1"
    await assert_sound(inv, room)


async def test_replays_answer_the_first_outcome(inv: Inventory, room: str) -> None:
    """A redelivered event after the order moved on changes nothing and answers what it
    answered the first time."""
    await apply(inv, stock_set(room, "a", 5))
    first = placed(room, "o1", ("a", 1))
    await apply(inv, first)
    await apply(inv, paid(room, "o1"))
    before = await dump(inv.redis, room)
    assert triple(await apply(inv, first)) == (False, "reserved", "")
    assert await dump(inv.redis, room) == before
    second = placed(room, "o2", ("a", 1), ts=T0)
    await apply(inv, second)
    await expire(inv, room, T0 + TTL_MS)
    assert triple(await apply(inv, paid(room, "o2"))) == (
        True, "confirmed", "re-reserved after expired")
    before = await dump(inv.redis, room)
    assert triple(await apply(inv, second)) == (False, "reserved", "")
    assert triple(await apply(inv, cancelled(room, "o2"))) == (
        False, "confirmed", "re-reserved after expired")
    assert await dump(inv.redis, room) == before
    assert await stock(inv, room) == {"a": (3, 0, 2)}


@pytest.mark.parametrize(("lines", "reason"), [
    ((("zzz", 1),), "unknown_sku"),
    ((("a", 11),), "over_limit"),
    ((("b", 6),), "sold_out"),
    ((("a", 1), ("b", 6)), "sold_out"),      # second line sold out: nothing reserved
    ((("a", 1), ("zzz", 1)), "unknown_sku"),
    ((("b", 6), ("a", 1)), "sold_out"),
])
async def test_rejections_reserve_nothing(inv: Inventory, room: str,
                                          lines: tuple[tuple[str, int], ...],
                                          reason: str) -> None:
    await apply(inv, stock_set(room, "a", 20))
    await apply(inv, stock_set(room, "b", 5))
    before = await stock(inv, room)
    event = placed(room, "o1", *lines)
    assert triple(await apply(inv, event)) == (True, "rejected", reason)
    assert await stock(inv, room) == before
    assert await inv.redis.zcard(keys.deadlines(room, 0)) == 0
    snapshot = await dump(inv.redis, room)
    assert triple(await apply(inv, event)) == (False, "rejected", reason)
    assert await dump(inv.redis, room) == snapshot
    assert (await stats(inv.redis, room)) == {f"orders_rejected:{reason}": "1"}
    # A rejected order cannot be paid.
    assert triple(await apply(inv, paid(room, "o1"))) == (True, "rejected", reason)
    assert await stock(inv, room) == before


async def test_sold_out_at_exactly_zero(inv: Inventory, room: str) -> None:
    await apply(inv, stock_set(room, "a", 2))
    assert (await apply(inv, placed(room, "o1", ("a", 2)))).status == "reserved"
    assert triple(await apply(inv, placed(room, "o2", ("a", 1)))) == (True, "rejected",
                                                                      "sold_out")
    await apply(inv, stock_set(room, "z", 0))   # a known SKU with none left: sold out
    assert (await apply(inv, placed(room, "o3", ("z", 1)))).reason == "sold_out"
    assert await stock(inv, room) == {"a": (0, 2, 0), "z": (0, 0, 0)}


async def test_paid_confirms_and_paid_twice_changes_nothing(inv: Inventory,
                                                            room: str) -> None:
    await apply(inv, stock_set(room, "a", 5))
    await apply(inv, placed(room, "o1", ("a", 2)))
    pay = paid(room, "o1")
    out = await apply(inv, pay)
    assert triple(out) == (True, "confirmed", "")
    assert [(u.available, u.reserved, u.sold) for u in out.levels] == [(3, 0, 2)]
    assert await inv.redis.zcard(keys.deadlines(room, 0)) == 0
    before = await dump(inv.redis, room)
    assert triple(await apply(inv, pay)) == (False, "confirmed", "")
    assert triple(await apply(inv, paid(room, "o1"))) == (False, "confirmed", "")
    assert await dump(inv.redis, room) == before
    s = await stats(inv.redis, room)
    assert s["orders_paid"] == "1" and float(s["gmv"]) == 20.0


async def test_paid_for_an_unknown_order(inv: Inventory, room: str) -> None:
    await apply(inv, stock_set(room, "a", 5))
    before = await stock(inv, room)
    out = await apply(inv, paid(room, "nope"))
    assert (out.status, out.reason, out.levels) == ("rejected", "unknown_order", ())
    assert await stock(inv, room) == before
    # Cancel / payment_failed of an unknown order change nothing.
    assert (await apply(inv, cancelled(room, "nope"))).reason == "unknown_order"
    assert (await apply(inv, payment_failed(room, "nope"))).reason == "unknown_order"
    assert await stock(inv, room) == before
    # The early payment is remembered: its order.placed is confirmed, not left to expire.
    late = await apply(inv, placed(room, "nope", ("a", 2)))
    assert (late.fresh, late.status, late.reason) == (True, "confirmed", "paid before placed")
    assert await stock(inv, room) == {"a": (3, 0, 2)}
    assert await inv.redis.zcard(keys.deadlines(room, 0)) == 0


async def test_cancel_releases_and_cancel_after_paid_is_a_noop(inv: Inventory,
                                                               room: str) -> None:
    await apply(inv, stock_set(room, "a", 5))
    await apply(inv, placed(room, "o1", ("a", 2)))
    await apply(inv, placed(room, "o2", ("a", 1)))
    out = await apply(inv, cancelled(room, "o1"))
    assert triple(out) == (True, "released", "cancelled")
    assert [(u.available, u.reserved, u.sold) for u in out.levels] == [(4, 1, 0)]
    before = await dump(inv.redis, room)
    assert triple(await apply(inv, cancelled(room, "o1"))) == (False, "released", "cancelled")
    assert triple(await apply(inv, payment_failed(room, "o1"))) == (False, "released",
                                                                   "cancelled")
    assert await dump(inv.redis, room) == before
    # Paid after cancel: refused, stock untouched; a second paid answers the same.
    assert triple(await apply(inv, paid(room, "o1"))) == (True, "rejected", "cancelled")
    assert triple(await apply(inv, paid(room, "o1"))) == (False, "rejected", "cancelled")
    assert await stock(inv, room) == {"a": (4, 1, 0)}

    # o2 paid, then cancelled: the cancel is a no-op.
    await apply(inv, paid(room, "o2"))
    before = await dump(inv.redis, room)
    assert triple(await apply(inv, cancelled(room, "o2"))) == (False, "confirmed", "")
    assert triple(await apply(inv, payment_failed(room, "o2"))) == (False, "confirmed", "")
    assert await dump(inv.redis, room) == before
    assert await stock(inv, room) == {"a": (4, 0, 1)}
    s = await stats(inv.redis, room)
    assert (s["orders_reserved"], s["orders_released:cancelled"], s["orders_paid"],
            s["payments_rejected:cancelled"]) == ("2", "1", "1", "1")
    await assert_sound(inv, room)


async def test_payment_failed_then_paid_re_reserves(inv: Inventory, room: str) -> None:
    await apply(inv, stock_set(room, "a", 3))
    await apply(inv, placed(room, "o1", ("a", 2)))
    assert triple(await apply(inv, payment_failed(room, "o1"))) == (True, "released",
                                                                    "payment_failed")
    assert await stock(inv, room) == {"a": (3, 0, 0)}
    out = await apply(inv, paid(room, "o1"))
    assert triple(out) == (True, "confirmed", "re-reserved after payment_failed")
    assert await stock(inv, room) == {"a": (1, 0, 2)}
    await assert_sound(inv, room)


async def test_expiry_then_paid_with_stock_left(inv: Inventory, room: str) -> None:
    await apply(inv, stock_set(room, "a", 3))
    await apply(inv, placed(room, "o1", ("a", 2), ts=T0, viewer="v7"))
    assert await expire(inv, room, T0 + TTL_MS - 1) == []
    assert await stock(inv, room) == {"a": (1, 2, 0)}
    [(oid, viewer, out)] = await expire(inv, room, T0 + TTL_MS)
    assert (oid, viewer, *triple(out)) == ("o1", "v7", True, "released", "expired")
    assert await stock(inv, room) == {"a": (3, 0, 0)}
    assert await expire(inv, room, T0 + 10 * TTL_MS) == []
    out = await apply(inv, paid(room, "o1"))
    assert triple(out) == (True, "confirmed", "re-reserved after expired")
    assert [(u.available, u.reserved, u.sold) for u in out.levels] == [(1, 0, 2)]
    assert triple(await apply(inv, paid(room, "o1"))) == (False, "confirmed",
                                                         "re-reserved after expired")
    s = await stats(inv.redis, room)
    assert (s["orders_released:expired"], s["orders_paid"]) == ("1", "1")
    await assert_sound(inv, room)


async def test_expiry_then_paid_without_stock_left(inv: Inventory, room: str) -> None:
    await apply(inv, stock_set(room, "a", 3))
    await apply(inv, stock_set(room, "b", 3))
    await apply(inv, placed(room, "o1", ("a", 1), ("b", 2), ts=T0))
    await apply(inv, placed(room, "o2", ("b", 1), ts=T0 + 5))
    released = await expire(inv, room, T0 + TTL_MS)
    assert [(o, s.status) for o, _, s in released] == [("o1", "released")]
    assert await stock(inv, room) == {"a": (3, 0, 0), "b": (2, 1, 0)}
    # Someone else takes b meanwhile: o1's late payment cannot be honoured.
    await apply(inv, placed(room, "o3", ("b", 2)))
    before = await stock(inv, room)
    assert triple(await apply(inv, paid(room, "o1"))) == (True, "rejected", "expired")
    assert await stock(inv, room) == before
    # More stock later does not revive a payment already refused.
    await apply(inv, stock_set(room, "b", 10))
    assert triple(await apply(inv, paid(room, "o1"))) == (False, "rejected", "expired")
    assert await stock(inv, room) == {"a": (3, 0, 0), "b": (10, 3, 0)}
    # o2's deadline passes too; paying first makes the later expiry a no-op.
    await apply(inv, paid(room, "o2"))
    assert [o for o, _, _ in await expire(inv, room, T0 + 10 * TTL_MS)] == ["o3"]
    assert await stock(inv, room) == {"a": (3, 0, 0), "b": (12, 0, 1)}
    assert (await stats(inv.redis, room))["payments_rejected:expired"] == "1"
    await assert_sound(inv, room)


async def test_expiry_of_a_paid_order_in_flight_is_a_noop(inv: Inventory, room: str) -> None:
    """The sweeper read the due list, then the payment landed: the release must not apply."""
    await apply(inv, stock_set(room, "a", 3))
    await apply(inv, placed(room, "o1", ("a", 1)))
    await apply(inv, paid(room, "o1"))
    # Put the order back on the due list, as a sweeper that read it just before would see.
    await inv.redis.zadd(keys.deadlines(room, 0), {"o1": T0 + TTL_MS})
    [(_, _, out)] = await expire(inv, room, T0 + TTL_MS)
    assert triple(out) == (False, "confirmed", "")
    assert await stock(inv, room) == {"a": (2, 0, 1)}


async def test_one_pipeline_keeps_order_placed_then_paid(inv: Inventory, room: str) -> None:
    """A batch with placed, its duplicate and its paid, in one pipeline, as the worker runs it."""
    await apply(inv, stock_set(room, "a", 1))
    events: list[StockSet | OrderEvent] = [
        placed(room, "o1", ("a", 1)), placed(room, "o2", ("a", 1)),
        placed(room, "o1", ("a", 1)), paid(room, "o1"), cancelled(room, "o2")]
    got = [triple(out) for out in await apply_all(inv, room, events)]
    assert got == [(True, "reserved", ""), (True, "rejected", "sold_out"),
                   (False, "reserved", ""), (True, "confirmed", ""),
                   (False, "rejected", "sold_out")]
    assert await stock(inv, room) == {"a": (0, 0, 1)}


async def test_a_batch_longer_than_a_script_chunk(inv: Inventory, room: str) -> None:
    """1,200 orders (and their replays) in one call span several script chunks, in order."""
    await apply(inv, stock_set(room, "a", 700))
    orders = [placed(room, f"o{i}", ("a", 1), viewer=f"v{i}") for i in range(1200)]
    events: list[StockSet | OrderEvent] = [*orders, *orders[:300], paid(room, "o0")]
    outs = await apply_all(inv, room, events)
    assert len(outs) == len(events)
    assert [o.status for o in outs[:700]] == ["reserved"] * 700
    assert {(o.status, o.reason) for o in outs[700:1200]} == {("rejected", "sold_out")}
    assert all(not o.fresh and o.status == "reserved" for o in outs[1200:1500])
    assert [o.viewer_id for o in outs[:1200]] == [f"v{i}" for i in range(1200)]
    assert triple(outs[-1]) == (True, "confirmed", "")
    assert await stock(inv, room) == {"a": (0, 699, 1)}
    await assert_sound(inv, room)


async def test_one_call_leaves_what_one_call_per_op_leaves(inv: Inventory, room: str) -> None:
    """The script keeps a call's SKU counts and integer counters in Lua and writes them
    back at its end: one call of mixed ops (a restock among them, a re-reserve, replays)
    must answer and leave every key as one call per op does."""
    def show(r: str) -> list[StockSet | OrderEvent]:
        return [stock_set(r, "rice", 5, event_id="s1"), stock_set(r, "tea", 3, event_id="s2"),
                placed(r, "o1", ("rice", 2)), placed(r, "o2", ("rice", 2), ("tea", 1)),
                placed(r, "o3", ("rice", 2)), paid(r, "o1"), cancelled(r, "o2"),
                placed(r, "o4", ("rice", 1), viewer="v2"), stock_set(r, "rice", 10, event_id="s3"),
                placed(r, "o5", ("rice", 3)), payment_failed(r, "o4"), paid(r, "o4"),
                placed(r, "o6", ("nope", 1)), placed(r, "o7", ("tea", 11)),
                placed(r, "o1", ("rice", 2)), paid(r, "o5"), paid(r, "o5"),
                stock_set(r, "rice", 5, event_id="s1")]

    def seen(outs: list[Outcome]) -> list[object]:
        return [(triple(o), o.viewer_id,
                 [(u.sku, u.available, u.reserved, u.sold, u.version) for u in o.levels])
                for o in outs]

    apart = f"{room}-apart"
    together = await apply_all(inv, room, show(room))
    one_by_one = [await apply(inv, e) for e in show(apart)]
    assert seen(together) == seen(one_by_one)
    assert await stock(inv, room) == {"rice": (7, 0, 6), "tea": (3, 0, 0)}
    left = {k.replace(room, "ROOM"): v for k, v in (await dump(inv.redis, room)).items()}
    right = {k.replace(apart, "ROOM"): v for k, v in (await dump(inv.redis, apart)).items()}
    assert left == right
    await assert_sound(inv, room)


async def test_one_batch_expires_on_event_time(inv: Inventory, room: str) -> None:
    """A backlog read in one burst: a payment 600 s past its order's deadline finds it
    expired first (as the sweeper would have, had it run in time), then re-reserves it; a
    cancel's ts expires too. A replay of the batch reports no expiry again."""
    await apply(inv, stock_set(room, "a", 2))
    late = T0 + TTL_MS + 600_000
    events: list[StockSet | OrderEvent] = [
        placed(room, "o1", ("a", 1), ts=T0, viewer="v7"),
        msgspec.structs.replace(paid(room, "o1"), ts=late),
        placed(room, "o2", ("a", 1), ts=late + 1, viewer="v8"),
        msgspec.structs.replace(cancelled(room, "o2"), ts=late + 1 + TTL_MS + 1)]
    outs = await apply_all(inv, room, events)
    assert [triple(o) for o in outs] == [
        (True, "reserved", ""), (True, "confirmed", "re-reserved after expired"),
        (True, "reserved", ""), (False, "released", "expired")]
    assert [[(oid, x.viewer_id, *triple(x)) for oid, x in o.expired] for o in outs] == [
        [], [("o1", "v7", True, "released", "expired")],
        [], [("o2", "v8", True, "released", "expired")]]
    # Each expiry's levels come before its trigger's: the unit back, then sold again.
    assert [(u.available, u.reserved, u.sold) for u in outs[1].expired[0][1].levels] == [
        (2, 0, 0)]
    assert [(u.available, u.reserved, u.sold) for u in outs[1].levels] == [(1, 0, 1)]
    assert await stock(inv, room) == {"a": (1, 0, 1)}
    before = await dump(inv.redis, room)
    again = await apply_all(inv, room, events)
    assert [o.fresh or o.expired for o in again] == [()] * 4
    assert await dump(inv.redis, room) == before
    s = await stats(inv.redis, room)
    assert (s["orders_released:expired"], s["orders_paid"]) == ("2", "1")
    await assert_sound(inv, room)


async def test_a_unit_expired_within_a_batch_is_there_for_a_later_order(
        inv: Inventory, room: str) -> None:
    """One unit: an order at o1's deadline still finds it held (expiry is for events after
    the deadline, as the sweeper's `deadline <= now`), one a millisecond later gets it."""
    await apply(inv, stock_set(room, "a", 1))
    events: list[StockSet | OrderEvent] = [
        placed(room, "o1", ("a", 1), ts=T0),
        placed(room, "o2", ("a", 1), ts=T0 + TTL_MS, viewer="v2"),
        placed(room, "o3", ("a", 1), ts=T0 + TTL_MS + 1, viewer="v3")]
    outs = await apply_all(inv, room, events)
    assert [triple(o) for o in outs] == [(True, "reserved", ""),
                                         (True, "rejected", "sold_out"),
                                         (True, "reserved", "")]
    assert [[oid for oid, _ in o.expired] for o in outs] == [[], [], ["o1"]]
    assert await stock(inv, room) == {"a": (0, 1, 0)}
    # The sweeper finds nothing left to do for o1, and o3 is due at its own deadline.
    assert [oid for oid, _ in await inv.expire_due(room, now_ms=T0 + 2 * TTL_MS + 1)] == ["o3"]
    await assert_sound(inv, room)


async def test_due_entries_the_script_cannot_release_are_skipped(inv: Inventory,
                                                                  room: str) -> None:
    """Ids on the due list with no reservation behind them (a paid order put back by a
    sweeper's stale read, orders long gone), more than a page of them: an event after
    their deadline reports none of them and still expires the one real reservation."""
    await apply(inv, stock_set(room, "a", 3))
    await apply(inv, placed(room, "o1", ("a", 1)))
    await apply(inv, paid(room, "o1"))
    await apply(inv, placed(room, "o2", ("a", 1), ts=T0 + 1))
    await inv.redis.zadd(keys.deadlines(room, 0),
                         {"o1": T0, **{f"gone{i}": T0 for i in range(250)}})
    outs = await apply_all(inv, room, [
        placed(room, "o3", ("a", 1), ts=T0 + 2 * TTL_MS),
        placed(room, "o4", ("a", 1), ts=T0 + 2 * TTL_MS + 1)])
    assert [[oid for oid, _ in o.expired] for o in outs] == [["o2"], []]
    assert await stock(inv, room) == {"a": (0, 2, 1)}
    # Holding nothing, they left the zset: a page of them is not read again every call.
    assert await inv.redis.zrange(keys.deadlines(room, 0), 0, -1) == [b"o3", b"o4"]


async def test_bucketed_orders_are_left_to_the_sweeper(inv: Inventory, room: str) -> None:
    """A bucketed order's units go back to buckets after the script, too late for this
    batch's walks: the event ts does not expire it; the sweeper does."""
    await inv.apply(room, [msgspec.structs.replace(stock_set(room, "a", 4), buckets=2)],
                    ts=T0)
    events: list[StockSet | OrderEvent] = [
        placed(room, "o1", ("a", 1), ts=T0),
        placed(room, "o2", ("a", 1), ts=T0 + 10 * TTL_MS)]
    outs, _ = await inv.apply(room, events, ts=T0)
    assert [(triple(o), o.expired) for o in outs] == [((True, "reserved", ""), ())] * 2
    due, _ = await inv.expire_and_follow(room, now_ms=T0 + TTL_MS)
    assert [(oid, triple(o)) for oid, o in due] == [("o1", (True, "released", "expired"))]


# --------------------------------------------------------------------------- the oracle

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
