"""Failover, told honestly: the master holding a flash sale's room is killed with -9
mid-sale, its replica takes over, and we count what the order results promised against
what the promoted replica holds.

Redis replication is asynchronous: a master can acknowledge a script (and the worker
then sends `reserved`) before its replica has the write. If the master dies in that
window, the replica never had the reservation; its unit is sold again to a later order
and the sale oversells by one. With LIVECOMMERCE_REDIS_WAIT_REPLICAS=1 every inventory
batch waits for its replica before any result goes out, so what a result promised is on
the replica that takes over. The run prints its figures (README: "Failover").
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from helpers import now_ms
from redis.asyncio.cluster import RedisCluster
from test_contention import Results

from stream.core.config import Settings
from stream.core.topics import Topics
from stream.local.embedded import EmbeddedStack
from stream.local.runner import running
from stream.store import keys
from stream.store.connect import is_transient
from stream.store.inventory import Inventory

# A master killed on a loaded 2-core machine left orders without a result for 120 s once
# in about ten runs (README, Open gaps): one rerun, shown as RERUN in the summary.
pytestmark = [pytest.mark.integration, pytest.mark.flaky(reruns=1)]

UNITS = 300
ORDERS = 3_000
IN_FLIGHT = 20
SKU = "flash-1"


async def post(session: ClientSession, url: str, token: str, events: list[dict[str, Any]],
               ) -> int:
    """POST until the gateway takes it, as a client does: 503 (Redis failing over) and a
    connection error are retried after a pause; a duplicate means delivered."""
    for attempt in range(200):
        try:
            async with session.post(f"{url}/v1/events", data=orjson.dumps(events),
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status == 202:
                    answer = await resp.json()
                    return int(answer["accepted"])
                assert resp.status == 503, await resp.text()
        except (TimeoutError, OSError):
            pass
        await asyncio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)))
    raise AssertionError(f"not accepted after 200 tries: {events[0]['event_id']}")


async def served(read: Callable[[], Awaitable[object]], *, timeout_s: float = 30) -> None:
    """Once `read` answers: a cluster mid-failover fails it until the replica is promoted
    (the cluster's node timeout), and each failure makes the client refresh its slots."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await read()
            return
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# WAIT 1 with a single replica per master would stall the shard after the failover (the
# promoted replica has no replica of its own, so every WAIT answers 0): nothing is lost
# or oversold, but no result goes out until a replica is added. Two replicas per master
# keep one behind the new master.
@pytest.mark.parametrize(("wait_replicas", "replicas"), [(0, 1), (1, 2)],
                         ids=["async-replication", "wait-1"])
async def test_master_killed_mid_sale(stack: EmbeddedStack, wait_replicas: int,
                                      replicas: int, tmp_path: Path) -> None:
    cluster = EmbeddedStack(redis_cluster=3, redis_replicas=replicas)
    await cluster.start(kafka=False)
    settings = Settings(kafka_url=stack.kafka_url, redis_url=cluster.redis_url,
                        topic_prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=4,
                        redis_wait_replicas=wait_replicas)
    room = f"flash-{uuid.uuid4().hex[:8]}"
    results = Results(settings, Topics(settings.topic_prefix).order_results)
    started = time.monotonic()
    figures: dict[str, Any] = {}
    try:
        async with running(settings, workers=2, log_dir=tmp_path) as run, ClientSession(
                timeout=ClientTimeout(total=30)) as session:
            assert isinstance(run.redis, RedisCluster) and cluster.cluster is not None
            await results.consumer.start()
            host, commerce = (run.tokens.for_role(r) for r in ("host", "commerce"))
            stock = {"type": "stock.set", "event_id": f"stock-{room}", "room_id": room,
                     "ts": now_ms(), "sku": SKU, "qty": UNITS}
            assert await post(session, run.gateway_url, host, [stock]) == 1  # type: ignore[arg-type]
            inventory = Inventory(run.redis)
            while await inventory.levels(room) == []:
                assert time.monotonic() - started < 30, "stock.set not applied"
                await asyncio.sleep(0.05)
            port = run.redis.get_node_from_key(keys.stats(room)).port
            [victim] = [n for n in cluster.cluster.nodes if n.port == port]

            rng = random.Random(7)
            orders = [{"type": "order.placed", "event_id": f"place-{room}-{i}",
                       "room_id": room, "ts": now_ms(), "viewer_id": f"v{rng.randrange(900)}",
                       "order_id": f"o{i}", "items": [{"sku": SKU, "qty": 1, "price": 9.9}]}
                      for i in range(ORDERS)]
            bodies = [orders[i:i + 10] for i in range(0, ORDERS, 10)]
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def one(body: list[dict[str, Any]]) -> int:
                async with gate:
                    return await post(session, run.gateway_url, commerce, body)  # type: ignore[arg-type]

            sale = asyncio.gather(*(one(b) for b in bodies))
            # Kill the room's master once a fifth of the stock is promised: mid-sale.
            await results.read_until(
                lambda: sum(r.status == "reserved" for r in results.seen) >= UNITS // 5,
                timeout=60)
            killed_at = time.monotonic()
            await cluster.cluster.kill(victim)
            await sale
            ids = {o["order_id"] for o in orders}
            try:
                await results.read_until(lambda: ids <= {r.order_id for r in results.seen},
                                         timeout=120)
            except AssertionError:
                missing = sorted(ids - {r.order_id for r in results.seen})
                status = [await run.redis.hgetall(keys.order_prefix(room) + o)
                          for o in missing[:5]]
                stats = await run.redis.hgetall(keys.stats(room))
                from helpers import read_all

                from stream.core.codec import decode_events
                log = await read_all(settings, [Topics(settings.topic_prefix).order_events])
                where = {e.order_id: (p, off) for _, p, off, v in log
                         for _, e in decode_events(v).events if e.order_id in missing}
                consumed = await run.redis.hgetall(keys.consumed())
                raise AssertionError(f"{len(missing)} orders without a result, e.g. "
                                     f"{missing[:5]}: {status}; in kafka at {where}; "
                                     f"consumed {consumed}; stats {stats}") from None
            figures["results complete after kill (s)"] = round(time.monotonic() - killed_at, 1)
            # The results can all be out before the replica is promoted (0.0 s after the
            # kill in one run with another test beside it): wait until the room's slot is
            # served again before reading the books.
            await served(lambda: run.redis.hget(keys.stats(room), "orders"))
            promised = {r.order_id for r in results.seen if r.status == "reserved"}
            held = set()
            for order_id in promised:
                status = await run.redis.hget(keys.order_prefix(room) + order_id, "status")
                if status == b"reserved":
                    held.add(order_id)
            [level] = await inventory.levels(room)
            audit = await inventory.audit(room)
            figures.update({"promised": len(promised), "held by Redis": len(held),
                            "lost": len(promised - held),
                            "oversold": max(0, len(promised) - UNITS),
                            "redis reserved": level.reserved,
                            "redis available": level.available})
            # Inside Redis the books always balance: a script's effects replicate as one.
            assert not audit.problems, audit.problems
            assert level.reserved == len(held)
            if wait_replicas:
                assert promised == held, f"{len(promised - held)} promised, then lost"
                assert len(promised) == UNITS
            else:
                # Whatever was lost was sold again: promised = held + lost, never fewer.
                assert len(promised) >= UNITS
    finally:
        await results.consumer.stop()
        await cluster.stop()
        print(f"\nfailover (wait_replicas={wait_replicas}): {figures}, "
              f"total {time.monotonic() - started:.1f} s")
