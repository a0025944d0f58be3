"""Orders never run ahead of the stock they need, whatever topic a worker reads first.

Stock is loaded and orders are placed into a backlog before any worker has joined, as
when a show's workers scale up or take over after a crash; the worker that then starts
reads the order topic and the host topic in whatever order it likes. Every order must
be reserved: refusing orders while there is stock (少卖) is a loss for the brand. On a
single Redis node and on the 3-master embedded cluster (the `cluster_settings` fixture).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgspec
import orjson
import pytest
from aiohttp import ClientSession
from helpers import ev, now_ms, read_all, running_gateway
from redis.asyncio.cluster import RedisCluster
from test_contention import workers

from stream.core.config import Settings
from stream.core.models import OrderResult
from stream.core.topics import Topics
from stream.store.inventory import Inventory

pytestmark = pytest.mark.integration

UNITS, ORDERS = 50, 20
RESULTS_TIMEOUT_S = 60.0


@pytest.fixture(params=["single-node", "cluster"])
def on(request: pytest.FixtureRequest) -> tuple[Settings, bool]:
    """The test's settings on the shared single-node valkey, or on the 3-master cluster;
    and whether it is the cluster."""
    cluster = request.param == "cluster"
    return request.getfixturevalue("cluster_settings" if cluster else "settings"), cluster


async def test_orders_in_a_backlog_see_the_stock_loaded_before_them(
        on: tuple[Settings, bool], tmp_path: Path) -> None:
    settings, cluster = on
    room = f"backlog-{uuid.uuid4().hex[:8]}"
    topics = Topics(settings.topic_prefix)
    loaded_at = now_ms() - 60_000  # the orders' event time is 40 s after the load
    async with running_gateway(settings) as (gateway, url, tokens), ClientSession() as http:
        assert isinstance(gateway.redis, RedisCluster) == cluster
        async def post(events: list[dict[str, object]], role: str) -> None:
            async with http.post(f"{url}/v1/events", data=orjson.dumps(events),
                                 headers={"Authorization": f"Bearer {tokens.for_role(role)}"}
                                 ) as resp:  # type: ignore[arg-type]
                body = await resp.json()
                assert resp.status == 202 and body["accepted"] == len(events), body

        await post([ev("stock.set", room_id=room, sku="rice", qty=UNITS, ts=loaded_at)], "host")
        await post([ev("order.placed", room_id=room, viewer_id=f"v{i}", order_id=f"o{i}",
                       ts=loaded_at + 40_000, items=[{"sku": "rice", "qty": 1, "price": 9.9}])
                    for i in range(ORDERS)], "commerce")

        with workers(settings, tmp_path, 1):
            deadline = time.monotonic() + RESULTS_TIMEOUT_S
            results: dict[str, OrderResult] = {}
            while len(results) < ORDERS and time.monotonic() < deadline:
                for _, _, _, value in await read_all(settings, [topics.order_results]):
                    result = msgspec.json.decode(value, type=OrderResult)
                    if result.room_id == room:
                        results[result.order_id] = result
        assert len(results) == ORDERS, f"{len(results)} of {ORDERS} order results"
        refused = {r.order_id: r.reason for r in results.values() if r.status != "reserved"}
        assert not refused, f"refused while the stock was loaded: {refused}"
        [level] = await Inventory(gateway.redis).levels(room)
        assert (level.available, level.reserved, level.sold) == (UNITS - ORDERS, ORDERS, 0)
