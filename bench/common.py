"""What every benchmark needs: a fresh embedded stack with a gateway and workers as
separate processes (as in production), token-holding HTTP posting, and percentiles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.config import Settings, from_env
from stream.core.models import Event
from stream.core.topics import Topics
from stream.local import showplan
from stream.local.embedded import EmbeddedStack, free_port
from stream.local.runner import spawn, stop_processes
from stream.store.connect import Client, connect
from stream.worker.admin import ensure_topics


@dataclass
class System:
    settings: Settings
    tokens: Tokens
    url: str
    redis: Redis
    stack: EmbeddedStack
    gateway_pid: int  # for a profiler to attach to (bench/fanout.py --profile-storm)


@contextlib.asynccontextmanager
async def system(*, workers: int = 1, partitions: int = 8) -> AsyncIterator[System]:
    """Embedded tansu + valkey, `workers` worker processes and one gateway process."""
    with tempfile.TemporaryDirectory(prefix="lc-bench-") as tmp:
        async with EmbeddedStack() as stack:
            tokens = Tokens.generate()
            tokens_file = Path(tmp) / "tokens.json"
            tokens.save(tokens_file)
            port = free_port()
            settings = from_env(kafka_url=stack.kafka_url, redis_url=stack.redis_url,
                                tokens_file=tokens_file, http_port=port,
                                partitions=partitions)
            await ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                                partitions=partitions)
            procs = [spawn(["gateway", "--host", "127.0.0.1"], settings,
                           Path(tmp) / "gateway.log")]
            procs += [spawn(["worker"], settings, Path(tmp) / f"worker-{i}.log")
                      for i in range(workers)]
            redis = Redis.from_url(stack.redis_url)
            url = f"http://127.0.0.1:{port}"
            try:
                await _wait_http(url + "/healthz")
                yield System(settings, tokens, url, redis, stack, procs[0].pid)
            finally:
                await stop_processes(procs)
                await redis.aclose()


async def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout_s} s")
            await asyncio.sleep(0.1)


async def post(session: aiohttp.ClientSession, sys_: System, role: str,
               events: list[dict]) -> dict:
    headers = {"Authorization": f"Bearer {sys_.tokens.for_role(role)}"}  # type: ignore[arg-type]
    async with session.post(sys_.url + "/v1/events", data=orjson.dumps(events),
                            headers=headers) as resp:
        body = await resp.json()
        if resp.status != 202 or body["rejected"]:
            raise RuntimeError(f"gateway said {resp.status}: {str(body)[:300]}")
        return body


def now_ms() -> int:
    return int(time.time() * 1000)


async def stock_sse(session: aiohttp.ClientSession, url: str, room: str, *, until: int,
                    seen: list[tuple[int, float]], ready: asyncio.Event,
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Read the room's SSE stock stream: `ready` at the snapshot, then (reserved, clock())
    into `seen` per `stock` event, until `reserved` reaches `until`."""
    async with session.get(f"{url}/v1/rooms/{room}/stock/stream") as resp:
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                if event == "snapshot":
                    ready.set()
                elif event == "stock":
                    reserved = json.loads(line[5:])["reserved"]
                    seen.append((reserved, clock()))
                    if reserved >= until:
                        return


def emit(figures: dict[str, object], path: Path | None) -> None:
    """The figures as one JSON line (and into `path`, for `bench/run.py`)."""
    if path:
        path.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def describe(values: list[float]) -> str:
    return (f"p50 {pct(values, 50):.1f} ms, p99 {pct(values, 99):.1f} ms, "
            f"max {max(values):.1f} ms, mean {statistics.fmean(values):.1f} ms, n={len(values)}")


@dataclass
class Spent:
    """What a measured block took: wall seconds, this process's CPU, valkey's CPU."""

    wall: float = 0.0
    cpu: float = 0.0
    valkey: float = 0.0


@contextlib.asynccontextmanager
async def spent(redis: Client, *, profile: bool = False) -> AsyncIterator[Spent]:
    """Time the block: wall clock, this process's CPU and valkey's (INFO cpu), filled in
    when it ends; with `profile`, cProfile's 15 costliest functions are printed after."""
    out = Spent()
    profiler = cProfile.Profile() if profile else None
    before, cpu = await redis.info("cpu"), time.process_time()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    yield out
    if profiler is not None:
        profiler.disable()
    out.wall = time.perf_counter() - started
    after, out.cpu = await redis.info("cpu"), time.process_time() - cpu
    out.valkey = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


@contextlib.asynccontextmanager
async def valkey_alone() -> AsyncIterator[Client]:
    """A fresh embedded valkey, without Kafka, and a client of it."""
    stack = EmbeddedStack()
    await stack.start(kafka=False)
    try:
        redis = await connect(stack.redis_url)
        try:
            yield redis
        finally:
            await redis.aclose()
    finally:
        await stack.stop()


def show_from_args(doc: str, room: str) -> tuple[argparse.Namespace, list[Event]]:
    """`--viewers`, `--minutes` and `--profile` parsed, and the simulated show they ask
    for in `room` (seed 7: the viewer benchmark's show at its defaults)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    plan = showplan.plan_for(room_id=room, viewers=args.viewers,
                             duration_s=args.minutes * 60, speed=1, seed=7)
    return args, [e for _, e in showplan.broadcast(plan)]
