"""connect.py on a real embedded Redis Cluster and a single node: which client a URL
gets, slot-checked scripts (also inside cluster pipelines, also after the scripts were
lost), and a wrong Redis refused in one line within the timeout instead of a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stream.core.auth import Tokens
from stream.core.config import Settings, to_env
from stream.local.cluster import slot_ranges
from stream.local.embedded import EmbeddedStack, free_port
from stream.store import keys, scripts
from stream.store.connect import RedisUnusable, connect, parse_nodes
from stream.store.inventory import Inventory

pytestmark = pytest.mark.integration


def test_parse_nodes() -> None:
    nodes, options = parse_nodes("redis://u:p%40ss@h1:7000,h2:7001/0")
    assert nodes == [("h1", 7000), ("h2", 7001)]
    assert (options["username"], options["password"], options["db"]) == ("u", "p@ss", 0)
    assert parse_nodes("h3:7002")[0] == [("h3", 7002)]
    with pytest.raises(RedisUnusable, match="scheme"):
        parse_nodes("http://h1:7000")
    with pytest.raises(RedisUnusable, match="bad port"):
        parse_nodes("redis://h1:x")


def test_slot_ranges_cover_every_slot_once() -> None:
    for masters in (1, 3, 5):
        ranges = slot_ranges(masters)
        slots = [s for lo, hi in ranges for s in range(lo, hi + 1)]
        assert slots == list(range(16384))


async def test_url_gets_the_client_of_its_kind(stack: EmbeddedStack,
                                               redis_cluster: EmbeddedStack) -> None:
    single = await connect(stack.redis_url)
    assert isinstance(single, Redis)
    await single.aclose()
    # Any one node of the cluster is enough to find all of them.
    one_node = redis_cluster.redis_url.split(",")[1]
    client = await connect(f"redis://{one_node}")
    try:
        assert isinstance(client, RedisCluster)
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()


async def test_room_script_in_cluster_pipelines(redis_cluster: EmbeddedStack) -> None:
    """Rooms on all three masters in one pipeline (grouped per node); then the scripts
    flushed everywhere (as a failover to an empty replica would): a transient error,
    and the retry loads them again."""
    client = await connect(redis_cluster.redis_url)
    assert isinstance(client, RedisCluster)
    inventory = Inventory(client)
    rooms = [f"slot-room-{i}" for i in range(12)]
    nodes = {client.get_node_from_key(keys.stats(r)).name for r in rooms}
    assert len(nodes) == 3, "the rooms should spread over all masters"
    try:
        async with client.pipeline(transaction=False) as pipe:
            for room in rooms:
                await inventory.queue(pipe, room, [["set", f"s-{room}", "sku", 7, "", ""]])
            answers = await scripts.execute(pipe)
        assert len(answers) == len(rooms)
        for room in rooms:
            [level] = await inventory.levels(room)
            assert level.available == 7
        await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
        ops = [["place", "o1", "v1", "901000", [["sku", 1, 9.0]], "0", "1", "1000", 0]]
        with pytest.raises(scripts.ScriptsLost):
            async with client.pipeline(transaction=False) as pipe:
                await inventory.queue(pipe, rooms[0], ops)
                await scripts.execute(pipe)
        [outcome] = await inventory.run(rooms[0], ops, ts=1000)
        assert outcome.status == "reserved"
    finally:
        await client.aclose()


async def test_cross_slot_script_is_refused_before_redis(stack: EmbeddedStack) -> None:
    """On a single node too: the bug shows in any test, not first in production."""
    client = await connect(stack.redis_url)
    script = client.register_script("return 1")
    try:
        with pytest.raises(scripts.CrossSlotScript, match="several hash slots"):
            await scripts.call(script, keys=[keys.stats("a"), keys.stats("b")], args=[],
                               client=client)
        assert await scripts.call(script, keys=[keys.stats("a"), keys.skus("a")], args=[],
                                  client=client) == 1
    finally:
        await client.aclose()


async def test_unreachable_redis_is_said_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(RedisUnusable, match="cannot reach Redis"):
        await connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=2)
    assert time.monotonic() - started < 10


async def test_several_nodes_that_are_no_cluster_are_refused(stack: EmbeddedStack) -> None:
    node = stack.redis_url.removeprefix("redis://").removesuffix("/0")
    with pytest.raises(RedisUnusable, match="not in cluster mode"):
        await connect(f"redis://{node},{node}", timeout_s=2)


async def test_cluster_without_slots_is_refused(tmp_path: Path) -> None:
    """A node in cluster mode that serves no slots (a cluster never formed)."""
    from stream.local.cluster import EmbeddedCluster

    cluster = EmbeddedCluster(masters=1, workdir=tmp_path)
    node = await cluster._start_node(0, time.monotonic() + 20)
    cluster.nodes = [node]
    try:
        with pytest.raises(RedisUnusable, match="cluster_state:fail, 0 of 16384 slots"):
            await connect(node.url.removesuffix("/0"), timeout_s=1)
    finally:
        await cluster.stop()


@pytest.mark.parametrize("command", ["worker", "gateway"])
def test_process_with_a_wrong_redis_exits_in_one_line(stack: EmbeddedStack, command: str,
                                                      tmp_path: Path) -> None:
    settings = Settings(kafka_url=stack.kafka_url,
                        redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        redis_connect_timeout_s=3, http_port=free_port(),
                        tokens_file=None)
    env = {**os.environ, **to_env(settings)}
    if command == "gateway":
        tokens = Path(f"{tmp_path}/tokens.json")
        Tokens.generate().save(tokens)
        env["LIVECOMMERCE_TOKENS_FILE"] = str(tokens)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "stream", command], env=env,
                          capture_output=True, timeout=30)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert time.monotonic() - started < 30
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], lines
