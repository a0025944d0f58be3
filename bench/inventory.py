"""Hot-SKU reservations: the full path against raw Redis script calls, in one run.

    .venv/bin/python bench/inventory.py [--orders 40000] [--rate 1000] [--seconds 10]

1. Full path: order.placed events POSTed to the gateway (a separate process), through
   Kafka to a worker process, reserved in Redis, until every order has its result on
   lc.order-results. All orders are for one SKU (the flash-sale item).
2. Baseline, same Redis server: the same script called once per order with redis-py
   pipelined EVALSHA, 1,000 per pipeline (the usual way to drive a reserve script).
3. Latency at a steady --rate orders/s: from the gateway's 202 for a request to the
   first SSE `stock` event that includes its orders (conservative: a request counts
   as seen only when every order before it is in too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import System, describe, emit, now_ms, pct, post, system

from stream.core.topics import Topics
from stream.store import keys
from stream.store.inventory import APPLY, ORDER_RETENTION_S, Inventory

SKU = "germ-rice-5kg"
BATCH = 500
IN_FLIGHT = 8


def order(room: str, n: int, ts: int) -> dict:
    return {"type": "order.placed", "event_id": f"{room}-e{n}", "room_id": room,
            "ts": ts, "viewer_id": f"v{n % 20_000}", "order_id": f"{room}-o{n}",
            "items": [{"sku": SKU, "qty": 1, "price": 59.9}]}


def stock_set(room: str, qty: int) -> dict:
    return {"type": "stock.set", "event_id": f"{room}-stock", "room_id": room,
            "ts": now_ms(), "sku": SKU, "qty": qty, "name": "有机胚芽米 5kg", "price": 59.9}


async def full_path(sys_: System, session: aiohttp.ClientSession, n: int) -> float:
    room = "bench-hot"
    await post(session, sys_, "host", [stock_set(room, n // 2)])  # half sell out: both paths
    consumer = AIOKafkaConsumer(Topics(sys_.settings.topic_prefix).order_results,
                                bootstrap_servers=sys_.settings.kafka_bootstrap,
                                auto_offset_reset="latest")
    await consumer.start()
    await consumer.seek_to_end()
    seen: set[str] = set()
    ts = now_ms()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def send(lo: int) -> None:
        async with gate:
            await post(session, sys_, "commerce",
                       [order(room, i, ts) for i in range(lo, min(n, lo + BATCH))])

    async def collect() -> None:
        while len(seen) < n:
            for records in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                seen.update(orjson.loads(r.value)["order_id"] for r in records)

    started = time.perf_counter()
    collector = asyncio.create_task(collect())
    await asyncio.gather(*(send(lo) for lo in range(0, n, BATCH)))
    await asyncio.wait_for(collector, timeout=300)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return n / elapsed


async def raw_script(sys_: System, n: int) -> float:
    """The same script, one EVALSHA per order, pipelined 1,000 deep: the usual ceiling."""
    redis = sys_.redis
    room = "bench-raw"
    inventory = Inventory(redis)
    await inventory.run(room, [["set", "s", SKU, n // 2, "", ""]], ts=now_ms())
    script = redis.register_script(APPLY)
    deadline = str(now_ms() + 900_000)
    started = time.perf_counter()
    for lo in range(0, n, 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(lo, min(n, lo + 1000)):
                op = ["place", f"o{i}", f"v{i}", deadline, [[SKU, 1, 59.9]]]
                await script(keys=[keys.stats(room), keys.deadlines(room), keys.skus(room),
                                   keys.stock_sets(room)],
                             args=[keys.stock_prefix(room), keys.order_prefix(room),
                                   ORDER_RETENTION_S, 10, orjson.dumps([op])], client=pipe)
            await pipe.execute()
    return n / (time.perf_counter() - started)


async def latency(sys_: System, session: aiohttp.ClientSession, rate: int,
                  seconds: float) -> list[float]:
    room = "bench-latency"
    total = int(rate * seconds)
    await post(session, sys_, "host", [stock_set(room, total + 1)])
    per_tick, tick_s = max(1, rate // 100), 0.01
    reserved_seen: list[tuple[int, float]] = []  # (reserved, monotonic time)
    ready = asyncio.Event()

    async def listen() -> None:
        async with session.get(f"{sys_.url}/v1/rooms/{room}/stock/stream") as resp:
            event = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    if event == "snapshot":
                        ready.set()
                    elif event == "stock":
                        data = json.loads(line[5:])
                        reserved_seen.append((data["reserved"], time.monotonic()))
                        if data["reserved"] >= total:
                            return

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 10)
    accepted: list[tuple[int, float]] = []  # (orders sent so far, time of the 202)
    sent = 0
    start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()

    async def send(lo: int, hi: int) -> None:
        ts = now_ms()
        await post(session, sys_, "commerce", [order(room, i, ts) for i in range(lo, hi)])
        accepted.append((hi, time.monotonic()))

    tick = 0
    while sent < total:
        hi = min(total, sent + per_tick)
        task = asyncio.create_task(send(sent, hi))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent = hi
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * tick_s - time.monotonic()))
    await asyncio.gather(*pending)
    await asyncio.wait_for(listener, timeout=30)
    out = []
    for count, at in accepted:
        # Requests may complete out of order; the orders up to `count` are in once the
        # SSE client has seen `reserved >= count`.
        seen = next(t for r, t in reserved_seen if r >= count)
        out.append(max(0.0, seen - at) * 1000)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=40_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    async with system(workers=1) as sys_, aiohttp.ClientSession() as session:
        await asyncio.sleep(8)  # let the worker join its group before timing anything
        full = await full_path(sys_, session, args.orders)
        raw = await raw_script(sys_, args.orders)
        lat = await latency(sys_, session, args.rate, args.seconds)
    figures = {
        "full_path_reservations_per_s": round(full),
        "raw_evalsha_per_s": round(raw),
        "ratio": round(full / raw, 3),
        "latency_rate_per_s": args.rate,
        "latency_p50_ms": round(pct(lat, 50), 1),
        "latency_p99_ms": round(pct(lat, 99), 1),
    }
    print(f"hot-SKU reservations, full path (gateway -> Kafka -> worker -> Redis -> result): "
          f"{full:,.0f}/s")
    print(f"raw redis-py pipelined EVALSHA of the same script, same server: {raw:,.0f}/s")
    print(f"ratio: {full / raw:.2f} (target >= 0.5)")
    print(f"202 -> SSE stock event at {args.rate} orders/s: {describe(lat)} (target p99 <= 100)")
    emit(figures, args.json)


if __name__ == "__main__":
    asyncio.run(main())
