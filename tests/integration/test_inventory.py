"""Inventory scripts on the real Redis: golden cases per path (the stateful fuzz against
a pure-Python model of the same rules is test_inventory_model.py)."""

from __future__ import annotations

import msgspec
import pytest
from inventory_ops import (
    T0,
    TTL_MS,
    apply,
    apply_all,
    assert_sound,
    cancelled,
    dump,
    expire,
    paid,
    payment_failed,
    placed,
    stats,
    stock,
    stock_set,
    triple,
)

from stream.core.models import OrderEvent, StockSet
from stream.store import keys
from stream.store.inventory import Inventory, Outcome

pytestmark = pytest.mark.integration

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
