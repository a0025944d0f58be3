"""Where the 202 -> SSE time goes: the latency phase of bench/inventory.py, stage by stage.

    .venv/bin/python bench/latency_stages.py [--rate 1000] [--seconds 8] [--json F]

A diagnostic, not a ratio (it is not in `make bench`): requests of `rate / 100` orders
every 10 ms for one SKU, and four clocks in this process beside the SSE client:
1. the request, from its send to the gateway's 202;
2. 202 -> the request's order results in Kafka: the newest of their record times (the
   worker's producer stamps each when it appends it, on this machine's wall clock);
3. result -> the first stock update on the Redis channel that includes the request
   (`reserved` at least its orders so far): the coalescing wait and the publish;
4. channel -> the SSE client's `stock` event: the gateway's fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import System, emit, now_ms, pct, post, stock_sse, system
from inventory import order, stock_set

from stream.core.topics import Topics
from stream.store import keys

ROOM = "bench-stages"
STAGES = ("post_to_202", "202_to_result", "result_to_channel", "channel_to_sse",
          "202_to_sse")


async def _results(sys_: System, stamps: dict[int, float], started: asyncio.Event) -> None:
    """Order number -> the Kafka time (s) of its result, for this room's orders."""
    consumer = AIOKafkaConsumer(Topics(sys_.settings.topic_prefix).order_results,
                                bootstrap_servers=sys_.settings.kafka_bootstrap,
                                auto_offset_reset="latest", fetch_max_wait_ms=5)
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=100)  # joined: from here on nothing is missed
        started.set()
        while True:
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for record in records:
                    oid = orjson.loads(record.value)["order_id"]
                    if oid.startswith(f"{ROOM}-o"):
                        stamps[int(oid.rsplit("-o", 1)[1])] = record.timestamp / 1000
    finally:
        await consumer.stop()


async def _channel(sys_: System, seen: list[tuple[int, float]], started: asyncio.Event) -> None:
    """(reserved, wall time) of each of this room's updates on the stock channel."""
    pubsub = sys_.redis.pubsub()
    await pubsub.subscribe(keys.STOCK_CHANNEL)
    started.set()
    async for message in pubsub.listen():
        if message["type"] == "message":
            at = time.time()
            seen += [(u["reserved"], at) for u in orjson.loads(message["data"])
                     if u["room_id"] == ROOM]


async def stages(sys_: System, session: aiohttp.ClientSession, rate: int,
                 seconds: float) -> dict[str, list[float]]:
    total = int(rate * seconds)
    await post(session, sys_, "host", [stock_set(ROOM, total + 1)])
    results: dict[int, float] = {}
    channel: list[tuple[int, float]] = []
    sse: list[tuple[int, float]] = []
    flags = [asyncio.Event() for _ in range(3)]
    listeners = [asyncio.create_task(_results(sys_, results, flags[0])),
                 asyncio.create_task(_channel(sys_, channel, flags[1]))]
    reader = asyncio.create_task(stock_sse(session, sys_.url, ROOM, until=total, seen=sse,
                                           ready=flags[2], clock=time.time))
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 30)
    requests: list[tuple[int, int, float, float]] = []  # lo, hi, sent, 202 (wall s)

    async def send(lo: int, hi: int) -> None:
        sent = time.time()
        await post(session, sys_, "commerce", [order(ROOM, i, now_ms()) for i in range(lo, hi)])
        requests.append((lo, hi, sent, time.time()))

    per_tick, sent, tick, start = max(1, rate // 100), 0, 0, time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    while sent < total:
        task = asyncio.create_task(send(sent, min(total, sent + per_tick)))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent, tick = min(total, sent + per_tick), tick + 1
        await asyncio.sleep(max(0.0, start + tick * 0.01 - time.monotonic()))
    await asyncio.gather(*pending)
    await asyncio.wait_for(reader, 30)
    await asyncio.sleep(0.5)  # the last results' records
    for task in listeners:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for lo, hi, sent_at, accepted in requests:
        # Requests may complete out of order: one is in once `reserved` covers it.
        result = max(results[i] for i in range(lo, hi))
        on_channel = next(t for r, t in channel if r >= hi)
        on_screen = next(t for r, t in sse if r >= hi)
        for name, ms in zip(STAGES, (accepted - sent_at, result - accepted,
                                     on_channel - result, on_screen - on_channel,
                                     on_screen - accepted), strict=True):
            out[name].append(ms * 1000)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    async with system(workers=1) as sys_, aiohttp.ClientSession() as session:
        await asyncio.sleep(8)  # let the worker join its group before timing anything
        found = await stages(sys_, session, args.rate, args.seconds)
    figures: dict[str, object] = {"rate_per_s": args.rate, "requests": len(found["202_to_sse"]),
                                  "stock_interval_ms": sys_.settings.stock_interval_ms}
    for name, values in found.items():
        p50, p90, p99 = (round(pct(values, q), 1) for q in (50, 90, 99))
        figures.update({f"{name}_p50_ms": p50, f"{name}_p90_ms": p90, f"{name}_p99_ms": p99})
        print(f"{name:18} p50 {p50:7.1f}  p90 {p90:7.1f}  p99 {p99:7.1f} ms")
    emit(figures, args.json)


if __name__ == "__main__":
    asyncio.run(main())
