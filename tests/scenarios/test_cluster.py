"""The system on a 3-master embedded Redis Cluster, behind two gateway processes.

- Two gateways (this process's and a `livecommerce gateway` child) and two workers: an
  order accepted by either gateway moves the stock every SSE client of both sees; a
  duplicate event id is refused whichever gateway it comes back to; the fan-out reaches
  every client of each gateway.
- The contention sale (tests/scenarios/test_contention.py) with its orders spread over
  both gateways: 100 units, 5,000 orders, exactly 100 reserved.
- The oracle show (tests/scenarios/test_oracle.py): 2,000 viewers on the cluster, spread
  over both gateways, two workers, with nudges, tags and follow-ups equal to the offline
  oracle.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import test_contention as contention
import test_oracle as oracle_show
from aiohttp import ClientSession, ClientTimeout
from helpers import Poster, now_ms, running_gateway
from redis.asyncio.cluster import RedisCluster

from stream.core.config import Settings
from stream.local.runner import running, spawn_gateway, stop_processes
from stream.store.connect import Client, connect
from stream.store.inventory import Inventory

pytestmark = pytest.mark.integration

CLIENTS_PER_GATEWAY = 25
SEEN_TIMEOUT_S = 15.0


@pytest.fixture
async def cluster_redis(cluster_settings: Settings) -> AsyncIterator[Client]:
    client = await connect(cluster_settings.redis_url)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


async def post(session: ClientSession, url: str, token: str,
               events: list[dict[str, Any]]) -> dict[str, Any]:
    async with session.post(f"{url}/v1/events", data=orjson.dumps(events),
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 202, await resp.text()
        return await resp.json()


async def all_see(streams: list[contention.StockStream], available: int) -> None:
    deadline = time.monotonic() + SEEN_TIMEOUT_S
    while any(s.newest is None or s.newest["available"] != available for s in streams):
        behind = [s.url for s in streams if s.newest is None or s.newest["available"] != available]
        assert time.monotonic() < deadline, \
            f"{len(behind)} of {len(streams)} clients never saw available={available}: {behind[:2]}"
        await asyncio.sleep(0.05)


async def test_two_gateways_share_stock_and_duplicates(cluster_settings: Settings) -> None:
    room = f"two-gw-{uuid.uuid4().hex[:8]}"
    async with running(cluster_settings, workers=2, gateways=2) as run, ClientSession(
            timeout=ClientTimeout(total=None, sock_read=None)) as session:
        assert isinstance(run.redis, RedisCluster)
        first, second = run.gateway_urls
        streams = [contention.StockStream(session, f"{url}/v1/rooms/{room}/stock/stream", "rice")
                   for url in (first, second) for _ in range(CLIENTS_PER_GATEWAY)]
        tasks = [asyncio.create_task(s.run()) for s in streams]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in streams)), 10)
            assert all(s.status == 200 for s in streams)
            host, commerce = (run.tokens.for_role(r) for r in ("host", "commerce"))
            stock = {"type": "stock.set", "event_id": f"stock-{room}", "room_id": room,
                     "ts": now_ms(), "sku": "rice", "qty": 50}
            assert (await post(session, first, host, [stock]))["accepted"] == 1  # type: ignore[arg-type]
            await all_see(streams, 50)

            def order(n: int) -> dict[str, Any]:
                return {"type": "order.placed", "event_id": f"place-{room}-{n}",
                        "room_id": room, "ts": now_ms(), "viewer_id": f"v{n}",
                        "order_id": f"o{n}", "items": [{"sku": "rice", "qty": 1, "price": 9.9}]}

            # An order through the second gateway: clients of both see it; then the first.
            assert (await post(session, second, commerce, [order(1)]))["accepted"] == 1  # type: ignore[arg-type]
            await all_see(streams, 49)
            assert (await post(session, first, commerce, [order(2)]))["accepted"] == 1  # type: ignore[arg-type]
            await all_see(streams, 48)

            # The same event ids again, each through the gateway that did not take it.
            for url, n in ((first, 1), (second, 2)):
                answer = await post(session, url, commerce, [order(n)])  # type: ignore[arg-type]
                assert answer["accepted"] == 0
                [refused] = answer["rejected"]
                assert "duplicate" in refused["error"]
            # ... and a new id of an order already placed changes nothing either.
            again = {**order(1), "event_id": f"again-{room}"}
            assert (await post(session, second, commerce, [again]))["accepted"] == 1  # type: ignore[arg-type]
            assert (await post(session, first, commerce, [order(3)]))["accepted"] == 1  # type: ignore[arg-type]
            await all_see(streams, 47)  # o3 reserved; the repeat of o1 took nothing
            levels = await Inventory(run.redis).levels(room)
            assert [(x.available, x.reserved) for x in levels] == [(47, 3)]
            # Every client of each gateway got the snapshot and every change, none lost.
            for s in streams:
                assert s.snapshot is not None and s.snapshot["room_id"] == room
                assert s.events >= 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_contention_sale_on_cluster_behind_two_gateways(
        cluster_settings: Settings, cluster_redis: Client, tmp_path: Path) -> None:
    async with running_gateway(cluster_settings) as (_, url, tokens):
        tokens_file = tmp_path / "tokens.json"
        tokens.save(tokens_file)
        settings = msgspec.structs.replace(cluster_settings, tokens_file=tokens_file)
        proc, other = await spawn_gateway(settings, tmp_path / "gateway-2.log")
        try:
            async with ClientSession(timeout=ClientTimeout(total=None,
                                                           sock_read=None)) as session:
                # The contention sale, its POSTs alternating between the two gateways.
                http = Poster(session, [url, other], tokens)
                await contention.test_hot_sku_sale(settings, http, cluster_redis,  # type: ignore[arg-type]
                                                   tmp_path, kill=False)
        finally:
            await stop_processes([proc])


# The same show as test_oracle's, with its known flake under load (README, Open gaps: the
# simulator's platform stream trailing its commerce stream by more than the grace): one
# rerun, as there.
@pytest.mark.flaky(reruns=1)
async def test_oracle_show_on_cluster_behind_two_gateways(cluster_settings: Settings,
                                                         tmp_path: Path) -> None:
    """The oracle show with its viewers spread over two gateway processes, two workers."""
    await oracle_show.assert_matches_oracle(cluster_settings, tmp_path, kill=False,
                                            room_id="cluster-oracle-room", seed=13,
                                            gateways=2)
