"""Builders and calls shared by the inventory tests: events of one room at T0, one script
call as the worker makes it, and the room's keys read back."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from helpers import INVENTORY_TTL_MS
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
from stream.store import keys
from stream.store.inventory import Inventory, Outcome

T0 = 1_750_000_000_000
TTL_MS = INVENTORY_TTL_MS  # the `inv` fixture's (tests/conftest.py)
_ids = itertools.count()

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
