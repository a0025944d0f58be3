"""A hot SKU's stock in buckets on the real Redis: loads, borrowing, steps cut short.

The fuzz in test_inventory_model.py checks whole outcomes against the model; these cases
check what only buckets have: an order borrows when its own bucket is dry, a redelivered
order never takes from a second bucket, and a step cut short (a crash between the
walk, the room's script and the bucket moves) is finished by the replay, once.
"""

from __future__ import annotations

import uuid

import pytest
from helpers import INVENTORY_TTL_MS

from stream.core.models import OrderCancelled, OrderItem, OrderPaid, OrderPlaced, StockSet
from stream.store import keys
from stream.store.buckets import home, shares
from stream.store.inventory import Inventory

pytestmark = pytest.mark.integration

T0 = 1_750_000_000_000
TTL_MS = INVENTORY_TTL_MS  # the `inv` fixture's (tests/conftest.py)


def load(room: str, qty: int, *, buckets: int | None, event_id: str | None = None) -> StockSet:
    return StockSet(event_id=event_id or uuid.uuid4().hex, room_id=room, ts=T0, sku="hot",
                    qty=qty, buckets=buckets, name="秒杀米", price=9.9)


def placed(room: str, order_id: str, qty: int = 1) -> OrderPlaced:
    return OrderPlaced(event_id=uuid.uuid4().hex, room_id=room, ts=T0, viewer_id="v",
                       order_id=order_id, items=[OrderItem(sku="hot", qty=qty, price=9.9)])


def paid(room: str, order_id: str) -> OrderPaid:
    return OrderPaid(event_id=uuid.uuid4().hex, room_id=room, ts=T0, viewer_id="v",
                     order_id=order_id)


def homed(n: int, bucket: int, count: int) -> list[str]:
    """`count` order ids whose home is `bucket` of `n`."""
    out: list[str] = []
    i = 0
    while len(out) < count:
        if home(f"o{i}", n) == bucket:
            out.append(f"o{i}")
        i += 1
    return out


async def level(inv: Inventory, room: str) -> tuple[int, int, int]:
    [sku] = await inv.levels(room)
    return sku.available, sku.reserved, sku.sold


async def per_bucket(inv: Inventory, room: str, n: int) -> list[int]:
    """Available units in each bucket."""
    return [int(await inv.redis.hget(keys.bucket_stock(room, "hot", b), "available") or 0)
            for b in range(n)]


def test_shares_add_up_and_differ_by_one_at_most() -> None:
    for qty, n in ((1000, 8), (7, 3), (2, 5), (0, 4)):
        split = shares(qty, n)
        assert sum(split) == qty and len(split) == n and max(split) - min(split) <= 1


async def test_load_splits_and_sums(inv: Inventory, room: str) -> None:
    event = load(room, 1000, buckets=8)
    await inv.load([event])
    assert await per_bucket(inv, room, 8) == [125] * 8
    assert await level(inv, room) == (1000, 0, 0)
    await inv.load([event])  # a replay changes nothing
    await inv.apply(room, [event], ts=T0)  # nor does the worker's own apply after the gateway
    assert await level(inv, room) == (1000, 0, 0)
    # A top-up without `buckets` keeps the SKU's 8; another count is ignored.
    await inv.load([load(room, 500, buckets=None), load(room, 400, buckets=2)])
    assert await per_bucket(inv, room, 8) == [50] * 8
    audit = await inv.audit(room)
    assert audit.problems == [] and audit.oversold == 0 and audit.skus == 1
    rows = await inv.redis.hgetall(keys.bucketed(room))
    assert rows == {b"hot": b"8"}


async def test_orders_borrow_when_their_bucket_is_dry(inv: Inventory, room: str) -> None:
    await inv.load([load(room, 8, buckets=4)])
    ids = homed(4, 1, 9)  # every one of them starts at bucket 1, which holds 2
    outcomes, levels = await inv.apply(room, [placed(room, oid) for oid in ids[:8]], ts=T0)
    assert [o.status for o in outcomes] == ["reserved"] * 8
    assert levels and (levels[-1].available, levels[-1].reserved) == (0, 8)
    [last], _ = await inv.apply(room, [placed(room, ids[8])], ts=T0)
    assert (last.status, last.reason) == ("rejected", "sold_out")
    assert await level(inv, room) == (0, 8, 0)


async def test_a_line_takes_from_several_buckets(inv: Inventory, room: str) -> None:
    await inv.load([load(room, 4, buckets=4)])  # one unit in each
    [out], _ = await inv.apply(room, [placed(room, "big", qty=3)], ts=T0)
    assert out.status == "reserved"
    assert sorted(await per_bucket(inv, room, 4)) == [0, 0, 0, 1]
    [short], _ = await inv.apply(room, [placed(room, "short", qty=2)], ts=T0)
    assert (short.status, short.reason) == ("rejected", "sold_out")
    # What the short line took on its way went back.
    assert await level(inv, room) == (1, 3, 0)
    [ok], _ = await inv.apply(room, [paid(room, "big")], ts=T0)
    assert ok.status == "confirmed"
    assert await level(inv, room) == (1, 0, 3)


async def test_a_replay_never_takes_from_a_second_bucket(inv: Inventory, room: str) -> None:
    await inv.load([load(room, 4, buckets=2)])
    [first] = homed(2, 0, 1)
    order = placed(room, first)
    # The worker died after the walk, before the room's script: the walk took a unit.
    await inv.walk({room: [order]})
    assert await level(inv, room) == (3, 1, 0)
    # Someone else empties the order's home bucket meanwhile.
    [other_id] = homed(2, 0, 2)[1:]
    await inv.apply(room, [placed(room, other_id)], ts=T0)
    assert await per_bucket(inv, room, 2) == [0, 2]
    [out], _ = await inv.apply(room, [order], ts=T0)  # the redelivery
    [again], _ = await inv.apply(room, [order], ts=T0)
    assert (out.status, again.status, again.fresh) == ("reserved", "reserved", False)
    # It read its unit of bucket 0 back instead of taking one of bucket 1.
    assert await per_bucket(inv, room, 2) == [0, 2]
    assert await level(inv, room) == (2, 2, 0)
    # The same order id with other lines reserves nothing more.
    [other], _ = await inv.apply(room, [placed(room, first, qty=2)], ts=T0)
    assert not other.fresh and await level(inv, room) == (2, 2, 0)


async def test_moves_cut_short_are_redone_once(inv: Inventory, room: str) -> None:
    await inv.load([load(room, 6, buckets=3)])
    await inv.apply(room, [placed(room, "a"), placed(room, "b"), placed(room, "c")], ts=T0)
    # The room confirmed `a` but the worker died before the bucket move: still reserved.
    pay = paid(room, "a")
    await inv.run(room, inv.ops([pay], {}, [0]), ts=T0)
    assert await level(inv, room) == (3, 3, 0)
    for _ in range(2):  # the redelivery, twice
        await inv.apply(room, [pay], ts=T0)
    assert await level(inv, room) == (3, 2, 1)
    cancel = OrderCancelled(event_id="c1", room_id=room, ts=T0, viewer_id="v", order_id="b")
    await inv.run(room, inv.ops([cancel], {}, [0]), ts=T0)
    # The cut-short cancel keeps b's deadline: the sweeper finishes it when due.
    assert await inv.redis.zscore(keys.deadlines(room, 0), "b") is not None
    due, levels = await inv.expire_and_follow(room, now_ms=T0 + TTL_MS)
    assert {oid for oid, o in due if o.fresh} == {"c"}  # b was cancelled, c expires
    assert levels and (levels[-1].available, levels[-1].reserved, levels[-1].sold) == (5, 0, 1)
    assert await inv.redis.zcard(keys.deadlines(room, 0)) == 0
    # Paid after its expiry, a bucketed order is not re-reserved.
    [late], _ = await inv.apply(room, [paid(room, "c")], ts=T0)
    assert (late.status, late.reason) == ("rejected", "expired")
    assert await level(inv, room) == (5, 0, 1)


async def test_a_bucketed_skus_pick_list_equals_its_sold(inv: Inventory, room: str) -> None:
    """The pick list reads the orders' own lines, the stock everyone sees sums the buckets:
    for a hot SKU beside a plain one they must still agree, replays and walks included."""
    from stream.hostview.afterreads import AfterShow

    plain = StockSet(event_id=uuid.uuid4().hex, room_id=room, ts=T0, sku="plain", qty=10,
                     name="鸡蛋", price=2.5)
    await inv.load([load(room, 10, buckets=4), plain])  # shares 3, 3, 2, 2

    def order(order_id: str, **qty: int) -> OrderPlaced:
        return OrderPlaced(event_id=uuid.uuid4().hex, room_id=room, ts=T0, viewer_id=order_id,
                           order_id=order_id,
                           items=[OrderItem(sku=s, qty=q, price=9.9 if s == "hot" else 2.5)
                                  for s, q in qty.items()])

    walker = order("walker", hot=4, plain=1)  # more than any one bucket holds
    events = [walker, order("small", hot=2), order("gone", hot=3), order("greedy", hot=20),
              order("unpaid", hot=1), order("eggs", plain=3)]
    await inv.apply(room, events, ts=T0)
    pays = [paid(room, "walker"), paid(room, "small"), paid(room, "eggs")]
    cancel = OrderCancelled(event_id="c", room_id=room, ts=T0, viewer_id="gone",
                            order_id="gone")
    await inv.apply(room, [*pays, cancel], ts=T0)
    await inv.apply(room, [walker, *pays, cancel], ts=T0)  # a redelivered batch
    pick = await AfterShow(inv.redis).picklist(room, by="sku")
    sold = {s.sku: s.sold for s in await inv.levels(room)}
    assert {r.sku: r.units for r in pick.skus} == sold == {"hot": 6, "plain": 4}
    assert {k: n for k, n in pick.excluded.items() if n} == {
        "cancelled": 1, "rejected": 1, "unpaid": 1}
    assert {r.sku: r.amount for r in pick.skus} == pytest.approx({"hot": 6 * 9.9,
                                                                  "plain": 4 * 2.5})
    assert (await inv.audit(room)).problems == []
