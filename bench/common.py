"""What every benchmark needs: a fresh embedded stack with a gateway and workers as
separate processes (as in production), token-holding HTTP posting, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from stream.core.topics import Topics
from stream.local.embedded import EmbeddedStack, free_port
from stream.local.runner import spawn, stop_processes
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
