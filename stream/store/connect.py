"""The one place every process gets its Redis client: a single node, or a Redis Cluster.

`LIVECOMMERCE_REDIS_URL` may name one node (`redis://host:port/0`, today's client) or
any node(s) of a cluster, comma-separated (`redis://h1:7000,h2:7001`). The first node
that answers is asked `INFO cluster`: with `cluster_enabled:1` the process gets
redis-py's asyncio `RedisCluster`, which routes each command (and each pipeline, grouped
per node) by key slot and follows MOVED/ASK by itself.

A process that cannot reach Redis, or meets a cluster it cannot use (slots not all
served, a database other than 0), raises `RedisUnusable` with a one-line reason within
`timeout_s` (25 s by default, so a start fails inside the ~30 s an operator waits),
instead of hanging on its first command.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Client: TypeAlias = Redis | RedisCluster
"""Either client: the code uses only what both offer (commands, pipelines, scripts)."""

AnyPipeline: TypeAlias = Pipeline | ClusterPipeline

TRANSIENT_REDIS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, BusyLoadingError,
    # A cluster mid-failover or mid-resharding: MOVED/ASK that redis-py's own redirects
    # did not settle, TRYAGAIN, CLUSTERDOWN, a slot no node serves yet, a write that
    # reached a master just demoted to replica (READONLY). All pass within the cluster's
    # node timeout, so the callers' retry loops treat them like a dropped connection.
    AskError, TryAgainError, ClusterDownError, ClusterError, ReadOnlyError,
    SlotNotCoveredError,
)
# Not redis-py's RedisClusterException as a whole: it also says "this command cannot be
# routed" (a bug), which a retry would repeat for ever.
"""Redis errors that a retry of the same step can outlive."""



def is_transient(exc: BaseException) -> bool:
    """A `TRANSIENT_REDIS` error, or the error of a write on a connection torn down under
    it. During a failover redis-py's cluster client closes every node's connections (its
    retry path calls `aclose()`) while other tasks still write on them; the write then
    fails on the dead transport with AttributeError (`'NoneType' object has no attribute
    'writelines'`, asyncio) or RuntimeError (`the handler is closed`, uvloop), both seen
    in tests/scenarios/test_failover.py (redis-py issue #4287 is the same leak after a
    peer reset). Only such errors passing through redis-py's connection code count, so a
    bug of ours is still a bug."""
    if isinstance(exc, TRANSIENT_REDIS):
        return True
    if not isinstance(exc, (AttributeError, TypeError, RuntimeError)):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_REDIS_CONNECTION):
            return True
        tb = tb.tb_next
    return False


_REDIS_CONNECTION = os.path.join("redis", "asyncio", "connection.py")

DEFAULT_TIMEOUT_S = 25.0
SLOTS = 16384


class RedisUnusable(RuntimeError):
    """Redis cannot be used as configured; the message is one line for the operator."""


def parse_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis://[user:pass@]h1:p1[,h2:p2…][/db]` (or bare `h1:p1,h2:p2`) -> nodes, options."""
    text = url.strip()
    if "://" not in text:
        text = "redis://" + text
    scheme, _, rest = text.partition("://")
    if scheme not in ("redis", "rediss"):
        raise RedisUnusable(f"LIVECOMMERCE_REDIS_URL: scheme {scheme!r} is not redis:// or "
                            f"rediss:// (got {url!r})")
    netloc, slash, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, creds = netloc, ""
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        split = urlsplit(f"//{part}")
        try:
            port = split.port or 6379
        except ValueError:
            raise RedisUnusable(f"LIVECOMMERCE_REDIS_URL: bad port in {part!r}") from None
        nodes.append((split.hostname or "127.0.0.1", port))
    if not nodes:
        raise RedisUnusable(f"LIVECOMMERCE_REDIS_URL: no host in {url!r}")
    options: dict[str, Any] = {"ssl": scheme == "rediss"}
    if creds:
        user, colon, password = creds.partition(":")
        options["username"] = unquote(user) or None if colon else None
        options["password"] = unquote(password) if colon else unquote(user)
    db_text = path.split("?")[0] if slash else ""
    try:
        options["db"] = int(db_text) if db_text else 0
    except ValueError:
        raise RedisUnusable(f"LIVECOMMERCE_REDIS_URL: database {db_text!r} is not a "
                            "number") from None
    return nodes, options


def _single_url(nodes: list[tuple[str, int]], options: dict[str, Any], url: str) -> str:
    return url if "://" in url else f"redis://{nodes[0][0]}:{nodes[0][1]}/{options['db']}"


def cluster_info(answer: object) -> dict[str, str]:
    """`CLUSTER INFO` as fields, whether redis-py parsed it into a dict or not."""
    if isinstance(answer, dict):
        return {str(k): str(v).strip() for k, v in answer.items()}
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


async def _probe(host: str, port: int, options: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """(cluster mode?, CLUSTER INFO fields) of one node; raises what the node raised."""
    node = Redis(host=host, port=port, username=options.get("username"),
                 password=options.get("password"), ssl=options["ssl"],
                 socket_connect_timeout=2.0, socket_timeout=3.0)
    try:
        info = await node.info("cluster")
        if int(info.get("cluster_enabled", 0)) != 1:
            return False, {}
        return True, cluster_info(await node.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER INFO"))
    finally:
        await node.aclose()


async def detect(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether `url` names a usable Redis Cluster (True) or a single node (False).

    Waits up to `timeout_s` for a node to answer and, on a cluster, for `cluster_state:ok`
    (a cluster still forming); then raises `RedisUnusable` saying why.
    """
    nodes, options = parse_nodes(url)
    deadline = time.monotonic() + timeout_s
    problem = ""
    attempt = 0
    while True:
        host, port = nodes[attempt % len(nodes)]
        attempt += 1
        try:
            cluster, fields = await _probe(host, port, options)
        except Exception as exc:
            problem = f"cannot reach Redis at {host}:{port} ({type(exc).__name__}: {exc})"
        else:
            if not cluster:
                if len(nodes) > 1:
                    raise RedisUnusable(f"LIVECOMMERCE_REDIS_URL names {len(nodes)} nodes "
                                        f"but {host}:{port} is not in cluster mode")
                return False
            if options["db"] != 0:
                raise RedisUnusable(f"LIVECOMMERCE_REDIS_URL: database {options['db']} on "
                                    "a Redis Cluster, which has only database 0")
            if fields.get("cluster_state") == "ok":
                return True
            problem = (f"Redis Cluster at {host}:{port} is not usable: cluster_state:"
                       f"{fields.get('cluster_state', '?')}, "
                       f"{fields.get('cluster_slots_ok', '?')} of {SLOTS} slots served")
        if time.monotonic() >= deadline:
            raise RedisUnusable(f"{problem}; gave up after {timeout_s:g} s")
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def make(url: str, *, cluster: bool, max_connections: int | None = None,
         **kwargs: Any) -> Client:
    """The client for `url` once `detect` said which kind it is (no round trip here).

    `max_connections` bounds a single node's pool as a *blocking* pool (a burst waits for
    a connection instead of failing); on a cluster it bounds each node's pool.
    """
    nodes, options = parse_nodes(url)
    if not cluster:
        single = _single_url(nodes, options, url)
        if max_connections is None:
            return Redis.from_url(single, **kwargs)
        return Redis.from_pool(BlockingConnectionPool.from_url(
            single, max_connections=max_connections, timeout=10, **kwargs))
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        username=options.get("username"), password=options.get("password"),
        ssl=options["ssl"], max_connections=max_connections or 2**31, **kwargs)


async def connect(url: str, *, max_connections: int | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> Client:
    """The process's Redis client for `url`: `RedisCluster` on a cluster, else `Redis`;
    `RedisUnusable` within about `timeout_s` when neither can be used."""
    cluster = await detect(url, timeout_s=timeout_s)
    client = make(url, cluster=cluster, max_connections=max_connections, **kwargs)
    if isinstance(client, RedisCluster):
        try:
            async with asyncio.timeout(max(1.0, timeout_s)):
                await client.initialize()
        except Exception as exc:
            await client.aclose()
            raise RedisUnusable(f"Redis Cluster at {url}: {type(exc).__name__}: "
                                f"{exc}") from exc
    return client


def plain(url: str, **kwargs: Any) -> Redis:
    """A client for exactly one node (probes of the embedded stack, cluster set-up)."""
    return Redis.from_url(url, **kwargs)


def is_cluster(client: object) -> bool:
    return isinstance(client, (RedisCluster, ClusterPipeline))
