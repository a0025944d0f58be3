"""A flash sale past one Redis slot: 1,000 units in 8 buckets, 20,000 orders posted to
two gateway processes sharing Redis, two worker processes.

Exactly 1,000 reserved; never oversold and `available + reserved + sold == loaded` at
every sample (the sums of the buckets); and no order refused while any bucket had
stock: with only orders of one unit and no releases, stock only falls, so once a
`sold_out` is counted every later sample must show nothing available. No order's home
is one of the last two buckets, so their 250 units sell only by borrowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import ClientSession, ClientTimeout
from helpers import Auditor, Poster, now_ms
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.core.topics import Topics
from stream.local.runner import spawn, spawn_gateway, stop_processes
from stream.store import keys
from stream.store.buckets import home
from stream.store.inventory import Inventory
from stream.store.ledger import read_stats
from stream.worker.admin import ensure_topics

pytestmark = pytest.mark.integration

SKU, UNITS, BUCKETS = "flash-1", 1_000, 8
ORDERS, VIEWERS, PER_REQUEST, IN_FLIGHT = 20_000, 5_000, 100, 8
SETTLE_TIMEOUT_S = 120.0


def hot_spot_ids(room: str, n: int) -> list[str]:
    """`n` order ids none of whose home is one of the last 2 buckets: the stock there is
    reached only by borrowing (without it, 250 units would stay unsold)."""
    ids = (f"{room}-o{j}" for j in itertools.count())
    return list(itertools.islice((i for i in ids if home(i, BUCKETS) < BUCKETS - 2), n))


@contextlib.asynccontextmanager
async def gateways(settings: Settings, tmp_path: Path, n: int) -> AsyncIterator[list[str]]:
    """`n` gateway processes (`livecommerce gateway`) on free ports; their base URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(n):
            # 60 s: on a busy 2-core machine a gateway's imports alone take 5 s.
            proc, url = await spawn_gateway(settings, tmp_path / f"gateway-{i}.log",
                                            timeout_s=60)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        await stop_processes(procs)


async def test_hot_sku_in_buckets_from_two_gateways(settings: Settings, redis: Redis,
                                                    tmp_path: Path) -> None:
    tokens = Tokens.generate()
    tokens.save(tmp_path / "tokens.json")
    settings = msgspec.structs.replace(settings, tokens_file=tmp_path / "tokens.json")
    await ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                        partitions=settings.partitions)
    room = f"flash-{uuid.uuid4().hex[:8]}"
    inventory = Inventory(redis)
    workers = [spawn(["worker"], settings, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        async with gateways(settings, tmp_path, 2) as urls, ClientSession(
                timeout=ClientTimeout(total=60)) as http:
            gateway = Poster(http, urls, tokens)  # its POSTs alternate between the two
            t0 = now_ms() - 60_000
            load = await gateway.post([{"type": "stock.set", "event_id": f"{room}-load",
                                        "room_id": room, "ts": t0, "sku": SKU, "qty": UNITS,
                                        "buckets": BUCKETS}], "host")
            assert load["accepted"] == 1, load
            # The gateway applied the load before its 202 (test_backlog): no wait for it.
            assert [(u.available, u.sold) for u in await inventory.levels(room)] == [(UNITS, 0)]
            auditor = Auditor(inventory, room)
            sampling = asyncio.create_task(auditor.run())
            orders = [{"type": "order.placed", "event_id": f"{room}-e{i}", "room_id": room,
                       "ts": t0 + 1_000 + i, "viewer_id": f"v{i % VIEWERS}",
                       "order_id": order_id, "items": [{"sku": SKU, "qty": 1, "price": 9.9}]}
                      for i, order_id in enumerate(hot_spot_ids(room, ORDERS))]
            batches = [orders[i:i + PER_REQUEST] for i in range(0, ORDERS, PER_REQUEST)]
            answers = await gateway.post_all(batches, "commerce", in_flight=IN_FLIGHT)
            assert [a["accepted"] for a in answers] == [len(b) for b in batches]
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while True:
                stats = await read_stats(redis, room)
                decided = sum(v for k, v in stats.items()
                              if k == "orders_reserved" or k.startswith("orders_rejected:"))
                if decided >= ORDERS or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.1)  # one more sample after the last order
            await auditor.stop(sampling)
        assert all(w.poll() is None for w in workers), "a worker died"
    finally:
        await stop_processes(workers)

    refused = {k: v for k, v in stats.items() if k.startswith("orders_rejected:")}
    assert stats.get("orders_reserved") == UNITS, stats
    assert refused == {"orders_rejected:sold_out": ORDERS - UNITS}, refused
    assert [(u.available, u.reserved, u.sold) for u in await inventory.levels(room)] == [
        (0, UNITS, 0)]
    for b in range(BUCKETS):
        bucket = await redis.hgetall(keys.bucket_stock(room, SKU, b))
        assert int(bucket[b"available"]) == 0 and int(bucket[b"reserved"]) > 0, (b, bucket)
    samples = auditor.samples
    assert len(samples) > 10, f"only {len(samples)} samples"
    broken = [s.audit for s in samples if s.audit.problems or s.audit.oversold]
    assert not broken, broken[:3]
    early = [s for s in samples if s.refused_before and s.available]
    assert not early, (f"{len(early)} samples with stock left after a sold_out, e.g. "
                       f"{early[0].refused_before} refused, {early[0].available} available")
