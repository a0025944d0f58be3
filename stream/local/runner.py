"""`up` and `demo`: the whole system on one machine, started and stopped as one.

Unset Kafka/Redis URLs mean the embedded stack (tansu + valkey as child processes);
workers run as child processes (`python -m stream worker`), exactly as they would be
scaled out; the gateway runs in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec

from stream.core.auth import Tokens
from stream.core.config import Settings, to_env
from stream.core.topics import Topics
from stream.gateway.app import Gateway
from stream.local.embedded import EmbeddedStack, die_with_parent, free_port
from stream.store import keys
from stream.store.connect import Client, connect
from stream.store.ledger import read_stats
from stream.worker.admin import ensure_topics
from stream.worker.rulewatch import load_rules


@dataclass(slots=True)
class Running:
    settings: Settings
    tokens: Tokens
    gateway_url: str
    redis: Client
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path = Path(".")
    # Every gateway: this process's first, then those running as child processes.
    gateway_urls: list[str] = field(default_factory=list)
    gateways: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stack: EmbeddedStack | None = None

    def add_worker(self) -> subprocess.Popen[bytes]:
        """Start one more worker process against the same Kafka and Redis."""
        proc = spawn(["worker"], self.settings, self.log_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    async def add_gateway(self) -> str:
        """Start one more gateway process (`livecommerce gateway`) on a free port; its URL
        once it answers `/healthz`."""
        proc, url = await spawn_gateway(
            self.settings, self.log_dir / f"gateway-{len(self.gateways) + 1}.log")
        self.gateways.append(proc)
        self.gateway_urls.append(url)
        return url


async def spawn_gateway(settings: Settings, log: Path, *, timeout_s: float = 30.0,
                        ) -> tuple[subprocess.Popen[bytes], str]:
    """`livecommerce gateway` as a child on a free port (`settings.tokens_file` must be
    set), returned once it answers `/healthz`; killed if it does not in `timeout_s`."""
    port = free_port()
    proc = spawn(["gateway", "--host", "127.0.0.1"],
                 msgspec.structs.replace(settings, http_port=port), log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway on {port} exited with {proc.returncode} "
                                       f"(log {log})")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{url}/healthz") as answer:
                        if answer.status == 200:
                            return proc, url
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway on {port} not healthy in {timeout_s:g} s "
                                       f"(log {log})")
                await asyncio.sleep(0.1)
    except BaseException:
        await stop_processes([proc])
        raise


def spawn(command: list[str], settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """`livecommerce COMMAND` as a child that sees `settings`, logs to `log` and dies with
    this process."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "stream", *command],
                                env={**os.environ, **to_env(settings)},
                                stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)


@contextlib.asynccontextmanager
async def running(settings: Settings, *, workers: int = 1, gateways: int = 1,
                  http_port: int | None = None, redis_cluster: int = 0,
                  redis_replicas: int = 0, log_dir: Path | None = None,
                  ) -> AsyncIterator[Running]:
    """Start what is not configured, then workers and the gateways (the first in this
    process, the others as child processes); stop all on exit. `redis_cluster` N starts
    an embedded Redis Cluster of N masters (each with `redis_replicas` replicas). The
    children's logs go to `log_dir` (kept) or a temporary directory."""
    # Workers are children that would die of a missing or broken rules directory one by
    # one, in their logs: refuse here instead, before anything starts.
    load_rules(settings.rules_dir)
    stack = EmbeddedStack(redis_cluster=redis_cluster, redis_replicas=redis_replicas)
    with tempfile.TemporaryDirectory(prefix="livecommerce-") as tmp:
        try:
            await stack.start(kafka=not settings.kafka_url, redis=not settings.redis_url)
            settings = msgspec.structs.replace(
                settings,
                kafka_url=settings.kafka_url or stack.kafka_url,
                redis_url=settings.redis_url or stack.redis_url,
            )
            if settings.tokens_file is not None and settings.tokens_file.exists():
                tokens = Tokens.load(settings.tokens_file)
            else:
                # Fresh tokens, written where LIVECOMMERCE_TOKENS_FILE points if it is set
                # (so a load tool started next to `up` knows where to read them).
                tokens = Tokens.generate()
                path = settings.tokens_file or Path(tmp) / "tokens.json"
                tokens.save(path)
                settings = msgspec.structs.replace(settings, tokens_file=path)
            port = http_port or (settings.http_port if os.environ.get(
                "LIVECOMMERCE_HTTP_PORT") else free_port())
            # Workers are children: give them the rules by absolute path.
            settings = msgspec.structs.replace(settings, http_port=port,
                                               rules_dir=settings.rules_dir.resolve())
            await ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                                partitions=settings.partitions)
            # RedisUnusable (a one-line reason) before any child is started.
            redis = await connect(settings.redis_url,
                                  timeout_s=settings.redis_connect_timeout_s)
            run = Running(settings, tokens, f"http://127.0.0.1:{port}", redis,
                          log_dir=log_dir or Path(tmp), gateway_urls=[f"http://127.0.0.1:{port}"],
                          stack=stack)
            gateway = Gateway(settings, tokens)
            try:
                for _ in range(workers):
                    run.add_worker()
                await gateway.start(port=port)
                for _ in range(gateways - 1):
                    await run.add_gateway()
                yield run
            finally:
                # The workers' stop signal first: their graceful stop (a final commit, a
                # group leave) then overlaps the gateway's instead of following it.
                signal_processes(run.workers)
                await gateway.stop()
                await stop_processes(run.gateways + run.workers)
                await redis.aclose()
        finally:
            await stack.stop()


def signal_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each process still running (a second one changes nothing: faust stops
    once)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


async def stop_processes(procs: list[subprocess.Popen[bytes]], *, grace_s: float = 10.0) -> None:
    """SIGTERM, a grace period for a clean commit, then SIGKILL."""
    signal_processes(procs)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a child
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def wait_drained(redis: Client, room_id: str, *, expected: int, unrouted_before: int = 0,
                       timeout_s: float = 120.0) -> dict[str, int | float]:
    """Wait until processed events plus dead letters reach `expected`; return the stats.

    Dead letters that name no room are counted in one place for every room, so on a
    system that has run other shows pass `unrouted_before` (`unrouted_dead_letters`
    before this show): those of earlier shows would otherwise end the wait early.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await room_totals(redis, room_id)
        if stats.get("events", 0) + stats.get("dead_letters", 0) - unrouted_before >= expected:
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


async def unrouted_dead_letters(redis: Client) -> int:
    """Dead letters so far that could not be tied to any room."""
    return int((await read_stats(redis, keys.NO_ROOM)).get("dead_letters", 0))


async def room_totals(redis: Client, room_id: str) -> dict[str, int | float]:
    """The room's counters, with dead letters that could not be tied to a room added in."""
    stats = await read_stats(redis, room_id)
    unrouted = await read_stats(redis, keys.NO_ROOM)
    stats["dead_letters"] = stats.get("dead_letters", 0) + unrouted.get("dead_letters", 0)
    return stats
