"""The acceptance test for the hot-SKU sale, through the real path.

100 units, 5,000 orders from 2,000 viewers posted concurrently to a gateway, duplicates
by event_id and by order_id, two worker processes: exactly 100 reserved, never oversold
at any sampled moment, and a stock stream (SSE) that ends on the final count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiokafka import AIOKafkaConsumer
from helpers import Auditor, Poster, now_ms, running_gateway
from redis.asyncio import Redis

from stream.core.config import Settings, to_env
from stream.core.models import OrderResult
from stream.core.topics import Topics
from stream.store.inventory import Inventory
from stream.store.ledger import read_stats
from stream.worker import gaps

pytestmark = pytest.mark.integration

SKU = "hot-1"
UNITS = 100
ORDERS = 5_000
VIEWERS = 2_000
IN_FLIGHT = 50
SAME_ID_SHARE = 0.10     # re-sent with the same event_id: the gateway refuses it
SAME_ORDER_SHARE = 0.05  # re-sent with a new event_id, same order_id: the worker ignores it
PAY, CANCEL = 60, 40
RESULTS_TIMEOUT_S = 60.0
SSE_LAG_S = 2.0
FINAL = {"available": UNITS - PAY, "reserved": 0, "sold": PAY}


# --------------------------------------------------------------------------- processes

@contextlib.contextmanager
def workers(settings: Settings, tmp_path: Path, n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` worker processes on the test's topics; stopped (and their logs kept) on exit."""
    env = {**os.environ, **to_env(settings)}
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i in range(n):
            log = (tmp_path / f"worker-{i}.log").open("wb")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Poster]:
    async with running_gateway(settings) as (_, url, tokens):
        async with ClientSession(timeout=ClientTimeout(total=None, sock_read=None)) as session:
            yield Poster(session, [url], tokens)
        t = time.monotonic()
    # aiohttp waits up to 60 s for open handlers: a stream that ignores shutdown shows here.
    assert time.monotonic() - t < 10, f"Gateway.stop() took {time.monotonic() - t:.0f} s"


# --------------------------------------------------------------------------- observers

@dataclass
class StockStream:
    """An SSE client of `/v1/rooms/{room}/stock/stream`, keeping what it saw of one SKU."""

    session: ClientSession
    url: str
    sku: str
    status: int | None = None
    snapshot: dict[str, Any] | None = None
    events: int = 0
    last: dict[str, Any] | None = None       # the last `stock` value received
    newest: dict[str, Any] | None = None     # the one with the highest version
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            async with self.session.get(self.url) as resp:
                self.status = resp.status
                self.connected.set()
                if resp.status != 200:
                    return
                kind, data = "message", []
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line:
                        if data:
                            self._on(kind, orjson.loads("\n".join(data)))
                        kind, data = "message", []
        finally:
            self.connected.set()

    def _on(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "snapshot":
            self.snapshot = data
            for row in data.get("skus", []):
                if row["sku"] == self.sku:
                    self._keep(row)
        elif kind == "stock" and data.get("sku") == self.sku:
            self.events += 1
            self._keep(data)

    def _keep(self, value: dict[str, Any]) -> None:
        self.last = value
        if self.newest is None or value.get("version", 0) >= self.newest.get("version", 0):
            self.newest = value


class Results:
    """Reads `order-results` from the start; a result may repeat (redelivery, duplicates)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                         auto_offset_reset="earliest",
                                         enable_auto_commit=False)
        # The workers write while this reads: what the broker let the read skip is read
        # again, as a worker does (stream/worker/gaps.py), or a result could go unseen
        # until the test's timeout. A fresh topic: every partition starts at 0.
        self.reader = gaps.Reader(self.consumer, bootstrap=settings.kafka_bootstrap, start=0)
        self.seen: list[OrderResult] = []
        self.last_at = 0.0

    async def read_until(self, done: Any, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"results incomplete after {timeout} s: {len(self.seen)} read"
            for r in await self.reader.getmany(timeout_ms=int(min(left, 0.2) * 1000)):
                self.seen.append(msgspec.json.decode(r.value, type=OrderResult))
                self.last_at = time.monotonic()


# --------------------------------------------------------------------------- the sale

def order(room: str, i: int, viewer: str) -> dict[str, Any]:
    return {"type": "order.placed", "event_id": f"place-{room}-{i}", "room_id": room,
            "ts": now_ms(), "viewer_id": viewer, "order_id": f"o{i}",
            "items": [{"sku": SKU, "qty": 1, "price": 99.0}]}


def shown(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The counts of a stock value, as compared with FINAL."""
    return None if value is None else {k: value[k] for k in FINAL}


def chunks(events: list[dict[str, Any]], rng: random.Random) -> list[list[dict[str, Any]]]:
    out, i = [], 0
    while i < len(events):
        n = rng.randint(1, 20)
        out.append(events[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("kill", [False, True], ids=["2-workers", "one-worker-killed"])
async def test_hot_sku_sale(settings: Settings, gateway: Poster, redis: Redis,
                            tmp_path: Path, kill: bool) -> None:
    """With `kill`, one worker is SIGKILLed mid-sale: its partitions are redelivered
    to the other (after the group's session timeout) and must change nothing twice."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    room = f"sale-{uuid.uuid4().hex[:10]}"
    topics = Topics(settings.topic_prefix)
    inventory = Inventory(redis)
    rng = random.Random(20240611)

    stream = StockStream(gateway.session,
                         f"{gateway.url}/v1/rooms/{room}/stock/stream", SKU)
    results = Results(settings, topics.order_results)
    auditor = Auditor(inventory, room)
    background = [asyncio.create_task(stream.run()), asyncio.create_task(auditor.run())]
    await results.consumer.start()
    try:
        with workers(settings, tmp_path, 2) as procs:
            await asyncio.wait_for(stream.connected.wait(), 5)

            # Stock on the shelf; the sale starts once a worker has applied it.
            host = {"type": "stock.set", "event_id": f"stock-{room}", "room_id": room,
                    "ts": now_ms(), "sku": SKU, "qty": UNITS, "name": "hot", "price": 99.0}
            assert (await gateway.post([host], "host"))["accepted"] == 1
            t = time.monotonic()
            while (await inventory.levels(room)) == []:
                assert time.monotonic() - t < 30, f"stock.set not applied; see {tmp_path}"
                assert all(p.poll() is None for p in procs), f"a worker died; see {tmp_path}"
                await asyncio.sleep(0.05)
            timings["workers up"] = time.monotonic() - started

            # 5,000 orders, 10% re-sent with the same event_id, 5% with a new one.
            originals = [order(room, i, f"v{rng.randrange(VIEWERS)}") for i in range(ORDERS)]
            same_id = rng.sample(originals, int(ORDERS * SAME_ID_SHARE))
            same_order = [{**e, "event_id": e["event_id"] + "-retry"}
                          for e in rng.sample(originals, int(ORDERS * SAME_ORDER_SHARE))]
            bodies = chunks(originals, rng) + chunks(same_id, rng) + chunks(same_order, rng)
            rng.shuffle(bodies)
            t = time.monotonic()
            if kill:
                half = len(bodies) // 2
                answers = await gateway.post_all(bodies[:half], "commerce", in_flight=IN_FLIGHT)
                await results.read_until(lambda: len(results.seen) >= ORDERS // 4,
                                         timeout=RESULTS_TIMEOUT_S)
                procs[1].kill()   # results out, offsets (mostly) not committed yet
                answers += await gateway.post_all(bodies[half:], "commerce", in_flight=IN_FLIGHT)
            else:
                answers = await gateway.post_all(bodies, "commerce", in_flight=IN_FLIGHT)
            timings["post 5,750 events"] = time.monotonic() - t
            accepted = sum(a["accepted"] for a in answers)
            refused = [r["error"] for a in answers for r in a["rejected"]]
            assert accepted == ORDERS + len(same_order)
            assert len(refused) == len(same_id)
            assert all("duplicate of an event already accepted" in e for e in refused)

            # Every order gets a result; one answer per order whatever the repeats.
            ids = {e["order_id"] for e in originals}
            await results.read_until(lambda: ids <= {r.order_id for r in results.seen},
                                     timeout=RESULTS_TIMEOUT_S)
            timings["all 5,000 results"] = time.monotonic() - t
            outcomes: dict[str, set[tuple[str, str | None]]] = {}
            for r in results.seen:
                outcomes.setdefault(r.order_id, set()).add((r.status, r.reason))
            assert set(outcomes) == ids, "a result for an order nobody placed"
            split = {k: v for k, v in outcomes.items() if len(v) > 1}
            assert not split, f"orders with conflicting results: {list(split.items())[:5]}"
            final = Counter(next(iter(v)) for v in outcomes.values())
            assert final == {("reserved", None): UNITS, ("rejected", "sold_out"): ORDERS - UNITS}
            [level] = await inventory.levels(room)
            assert (level.available, level.reserved, level.sold) == (0, UNITS, 0)

            # Pay 60 of the winners, cancel the other 40.
            winners = sorted(k for k, v in outcomes.items() if ("reserved", None) in v)
            viewer_of = {e["order_id"]: e["viewer_id"] for e in originals}

            def follow_up(kind: str, oid: str) -> dict[str, Any]:
                return {"type": kind, "event_id": f"{kind}-{room}-{oid}", "room_id": room,
                        "ts": now_ms(), "viewer_id": viewer_of[oid], "order_id": oid}

            paying, cancelling = winners[:PAY], winners[PAY:]
            second = ([follow_up("order.paid", o) for o in paying]
                      + [follow_up("order.cancelled", o) for o in cancelling])
            rng.shuffle(second)
            t = time.monotonic()
            answers = await gateway.post_all(chunks(second, rng), "commerce", in_flight=IN_FLIGHT)
            assert sum(a["accepted"] for a in answers) == UNITS

            def settled() -> bool:
                got = {(r.order_id, r.status) for r in results.seen}
                return all((o, "confirmed") in got for o in paying) and all(
                    (o, "released") in got for o in cancelling)

            await results.read_until(settled, timeout=RESULTS_TIMEOUT_S)
            timings["pay/cancel results"] = time.monotonic() - t
            last_result_at = results.last_at
            released = {r.reason for r in results.seen if r.status == "released"}
            assert released == {"cancelled"}
            [level] = await inventory.levels(room)
            assert (level.available, level.reserved, level.sold) == (UNITS - PAY, 0, PAY)
            version = level.version

            # Counters once per order, whatever the duplicates and redeliveries.
            stats = await read_stats(redis, room)
            assert stats["orders_reserved"] == UNITS
            assert stats["orders_rejected:sold_out"] == ORDERS - UNITS
            assert stats["orders_paid"] == PAY
            assert stats["orders_released:cancelled"] == CANCEL
            assert stats["ev:order.placed"] == ORDERS + len(same_order)
            assert procs[0].poll() is None, f"a worker died; see {tmp_path}"

            # The stock stream ends on the final count within SSE_LAG_S of the last result.
            while shown(stream.newest) != FINAL and (
                    time.monotonic() - last_result_at < SSE_LAG_S):
                await asyncio.sleep(0.02)
            timings["sse caught up after last result"] = time.monotonic() - last_result_at
    finally:
        background[0].cancel()
        await auditor.stop(background[1])
        await asyncio.wait([background[0]], timeout=10)
        await results.consumer.stop()
        print(f"\ntimings (s): { {k: round(v, 2) for k, v in timings.items()} }, "
              f"total {time.monotonic() - started:.1f}, audits {len(auditor.samples)}, "
              f"sse status {stream.status}, sse stock events {stream.events}, "
              f"{len(results.seen)} results for {len({r.order_id for r in results.seen})} orders")

    bad = [s.audit for s in auditor.samples if s.audit.problems or s.audit.oversold]
    assert not bad, bad[:3]
    assert len(auditor.samples) >= 20
    assert stream.status == 200, f"stock stream answered {stream.status}"
    assert stream.snapshot is not None and stream.snapshot["room_id"] == room
    assert shown(stream.newest) == FINAL, (stream.newest, stream.last)
    assert stream.newest is not None and stream.newest["version"] == version
    assert shown(stream.last) == FINAL, "the stream's last value is not the newest"
