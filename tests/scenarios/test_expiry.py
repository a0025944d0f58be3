"""Reservations expiring on event time, end to end: one show with a short TTL, sent at
40x and at 100x to two rooms of one worker.

Each order's whole result history must be what the sequential inventory model says
(reserved, then released: expired, then a late payment re-reserving it, ...), on one
partition: the viewer's input partition, like every other result of that viewer (the
sweeper's releases used to be hashed by order id). And the replay at 100x expires the
same reservations as the one at 40x. And a room gone quiet expires on the wall.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from helpers import read_all, running_gateway
from redis.asyncio import Redis
from reference.compare import order_differences
from reference.inventory import outcomes

from stream.core.auth import Tokens
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    Event,
    OrderCancelled,
    OrderEvent,
    OrderItem,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    OrderResult,
    StockSet,
    ViewerHeartbeat,
    ViewerJoined,
)
from stream.core.topics import Topics, partition_for
from stream.local.runner import spawn, stop_processes
from stream.store import keys

pytestmark = pytest.mark.integration

TTL_S = 120
SHOW_S = 720
VIEWERS = 40
# Far from every deadline, in event time, so neither the sweeper's second (100 s of show
# at 100x) nor partitions running apart can change which comes first: payments 2 s after
# the order (118 s before its deadline), late ones 600 s after it (480 s past it). The
# sweeper's clock follows the order and host topics only: when it followed every event,
# heartbeats read 1.2 s of wall ahead of the orders (a loaded machine) could expire a
# payment that came in time, the likely cause of one failure beside another test run.
# Orders on other partitions would have to run 5.2 s of wall apart, and a worker that
# starts behind the show does read them so (README, Open gaps, "Expiry across
# partitions"): a call's ops are merged by event time; across calls it is open.
PAY_S, LATE_S = 2, 600


def schedule(room: str, start_ms: int) -> list[Event]:
    """A viewer per order; by index: paid, never paid, paid late, cancelled late, payment
    failed then paid late."""
    n = iter(range(10**6))

    def at(cls: type[Event], t: float, **fields: Any) -> Event:
        return cls(event_id=f"{room}-{next(n)}", room_id=room,  # type: ignore[call-arg]
                   ts=start_ms + round(t * 1000), **fields)

    out = [at(BroadcastStarted, 0), at(StockSet, 0, sku="rice", qty=1000, name="米", price=9.9)]
    for i in range(VIEWERS):
        viewer, order, t = f"{room}-v{i}", f"{room}-o{i}", 10 + i * 2
        out.append(at(ViewerJoined, t - 5, viewer_id=viewer, source="douyin"))
        out += [at(ViewerHeartbeat, h, viewer_id=viewer) for h in range(t, SHOW_S, 20)]
        out.append(at(OrderPlaced, t, viewer_id=viewer, order_id=order,
                      items=[OrderItem("rice", 1, 9.9)]))
        kind = i % 5
        if kind == 0:
            out.append(at(OrderPaid, t + PAY_S, viewer_id=viewer, order_id=order))
        elif kind == 2:
            out.append(at(OrderPaid, t + LATE_S, viewer_id=viewer, order_id=order))
        elif kind == 3:
            out.append(at(OrderCancelled, t + LATE_S, viewer_id=viewer, order_id=order))
        elif kind == 4:
            out.append(at(OrderPaymentFailed, t + PAY_S, viewer_id=viewer, order_id=order,
                          reason="card_declined"))
            out.append(at(OrderPaid, t + LATE_S, viewer_id=viewer, order_id=order))
    out.append(at(BroadcastEnded, SHOW_S))
    return sorted(out, key=lambda e: e.ts)


async def send(url: str, tokens: Tokens, events: list[Event], *, speed: float) -> None:
    """Post the show on its schedule, a role at a time and each request awaited, so the
    inputs reach Kafka in event-time order."""
    t0, start = time.monotonic(), events[0].ts
    async with aiohttp.ClientSession() as session:
        i = 0
        while i < len(events):
            now_ms = start + (time.monotonic() - t0) * speed * 1000
            due = []
            while i < len(events) and events[i].ts <= now_ms:
                due.append(events[i])
                i += 1
            for role in ("host", "platform", "commerce"):
                batch = [e for e in due if e.role == role]
                if batch:
                    async with session.post(f"{url}/v1/events", data=encode(batch), headers={
                            "Authorization": f"Bearer {tokens.for_role(role)}"}) as resp:
                        body = await resp.read()
                        assert resp.status == 202, body
                        assert b'"rejected":[]' in body.replace(b" ", b""), body
            await asyncio.sleep(0.02)


async def stock_loaded(settings: Settings, rooms: list[str]) -> None:
    redis = Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + 30
        while not all([await redis.hget(keys.stock_prefix(room) + "rice", "available")
                       for room in rooms]):
            assert time.monotonic() < deadline, "the stock was never loaded"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


def histories(results: list[tuple[int, int, OrderResult]],
              ) -> dict[str, list[tuple[int, str, str]]]:
    """Each order's results in the order a consumer reads them: (partition, status, reason)."""
    out: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for partition, _, r in sorted(results, key=lambda x: (x[0], x[1])):
        out[r.order_id].append((partition, r.status, r.reason or ""))
    return out


async def test_expiry_on_event_time_keeps_each_order_on_one_partition(
        settings: Settings, tmp_path: Path) -> None:
    settings = msgspec.structs.replace(settings, reservation_ttl_s=TTL_S)
    topics = Topics(settings.topic_prefix)
    start_ms = int(time.time() * 1000) - SHOW_S * 1000  # every ts in the past when sent
    shows = {room: schedule(room, start_ms) for room in ("exp-40x", "exp-100x")}
    want = {room: outcomes(events, ttl_ms=TTL_S * 1000, expire_until=events[-1].ts)
            for room, events in shows.items()}
    async with running_gateway(settings) as (_, url, tokens):
        worker = spawn(["worker"], settings, tmp_path / "worker.log")
        try:
            # The stock first, as a host loads it before the show: a stock.set travels on
            # the host topic and would otherwise race the first orders (unknown_sku).
            setup = {room: [e for e in events if isinstance(e, StockSet | BroadcastStarted)]
                     for room, events in shows.items()}
            for room, events in setup.items():
                await send(url, tokens, events, speed=1)
                shows[room] = [e for e in shows[room] if e not in events]
            await stock_loaded(settings, list(shows))
            await asyncio.gather(send(url, tokens, shows["exp-40x"], speed=40),
                                 send(url, tokens, shows["exp-100x"], speed=100))
            expected = sum(len(w) for w in want.values())
            deadline = time.monotonic() + 90
            while True:  # every result the model calls for is out (no crash: no repeats)
                got = await read_all(settings, [topics.order_results])
                if len(got) >= expected or time.monotonic() > deadline:
                    break  # the comparisons below say what is missing
                await asyncio.sleep(1)
        finally:
            await stop_processes([worker])
    results = [(p, o, msgspec.json.decode(v, type=OrderResult)) for _, p, o, v in got]
    by_room = {room: [r for r in results if r[2].room_id == room] for room in shows}
    expired: dict[str, set[int]] = {}
    for room, events in shows.items():
        found = order_differences(want[room], by_room[room])
        assert found == []
        history = histories(by_room[room])
        model: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for o in want[room]:
            model[o.order_id].append((o.status, o.reason))
        viewer_of = {e.order_id: e.viewer_id for e in events if isinstance(e, OrderEvent)}
        for order_id, steps in model.items():
            partition = partition_for(viewer_of[order_id], settings.partitions)
            assert history[order_id] == [(partition, *s) for s in steps], order_id
        # Which reservations expired, as the live results say (by the order's index).
        expired[room] = {int(order_id.rsplit("-o", 1)[1]) for order_id, steps in history.items()
                         if any(step[1:] == ("released", "expired") for step in steps)}
    assert expired["exp-40x"] == expired["exp-100x"]
    # Never paid, paid late, cancelled late; not those paid in time or failed (released).
    assert expired["exp-40x"] == {i for i in range(VIEWERS) if i % 5 in (1, 2, 3)}


async def test_a_quiet_room_expires_on_the_wall(settings: Settings, tmp_path: Path) -> None:
    """No event after the order: only the sweeper's wall time can pass its deadline, and
    it may only for a partition its owner marks read to its end (stream/store/clocks.py).
    A worker that never marked its partitions would hold this reservation forever."""
    ttl_s = 3
    settings = msgspec.structs.replace(settings, reservation_ttl_s=ttl_s)
    topics = Topics(settings.topic_prefix)
    room, now_ms = "exp-quiet", int(time.time() * 1000)
    setup: list[Event] = [
        BroadcastStarted(event_id="q-b", room_id=room, ts=now_ms),
        StockSet(event_id="q-s", room_id=room, ts=now_ms, sku="rice", qty=5)]
    order = OrderPlaced(event_id="q-o", room_id=room, ts=now_ms + 1, viewer_id="q-v",
                        order_id="q-o1", items=[OrderItem("rice", 1, 9.9)])
    async with running_gateway(settings) as (_, url, tokens):
        worker = spawn(["worker"], settings, tmp_path / "worker.log")
        try:
            await send(url, tokens, setup, speed=1)
            await stock_loaded(settings, [room])
            await send(url, tokens, [order], speed=1)
            deadline = time.monotonic() + 30  # 10x the TTL
            while True:
                got = [msgspec.json.decode(v, type=OrderResult)
                       for _, _, _, v in await read_all(settings, [topics.order_results])]
                mine = [(r.status, r.reason) for r in got if r.order_id == "q-o1"]
                if len(mine) >= 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await stop_processes([worker])
    assert mine == [("reserved", None), ("released", "expired")]
    released = next(r for r in got if r.order_id == "q-o1" and r.status == "released")
    assert released.ts >= order.ts + ttl_s * 1000  # on the room's clock, not before
