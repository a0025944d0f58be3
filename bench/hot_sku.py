"""Raw script throughput for one hot SKU: its stock on 1 slot against N buckets.

    .venv/bin/python bench/hot_sku.py [--orders 40000] [--buckets 8] [--json FILE]
                                      [--redis-url redis://host:port/0]

Against one Redis (the embedded valkey unless --redis-url), with no Kafka and no worker:
only the scripts a flash sale runs, pipelined 1,000 calls deep, half the orders selling
out (stock = orders / 2), every order for one unit of one SKU.

- `1 slot, per order`: the room's APPLY script, one `place` per call (the usual way).
- `1 slot, batched`: APPLY with 500 `place` ops per call, the worker's shape.
- `N buckets, per order`: the bucket script, one `take` per call on the order's home
  bucket (no borrowing needed while it has stock); with 1 bucket, and with N.
- `room record, batched`: what a bucketed order still costs the room's slot: APPLY
  `place` ops whose line comes with its buckets (no stock to move), 500 per call.

On one node every slot shares one core, so N buckets cannot beat 1 here: this run gives
each script's cost per order, which the N-nodes row of the cluster divides between cores.
`server_us_per_order` is Redis' own time per order (INFO commandstats, EVALSHA usec):
a core's ceiling is 1e6 / that, whatever the client costs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, now_ms

from stream.local.embedded import EmbeddedStack
from stream.store import keys
from stream.store.applyscript import APPLY
from stream.store.buckets import BUCKET, home, shares
from stream.store.inventory import ORDER_RETENTION_S, Inventory, apply_keys

SKU = "flash-1"
DEPTH = 1000  # calls per pipeline
OPS_PER_CALL = 500  # the worker's chunk (inventory.CHUNK)


def room_keys(room: str) -> list[str]:
    return apply_keys(room, [0])  # every place below is on partition 0


def room_args(room: str, ops: list[list[object]]) -> list[object]:
    return [keys.stock_prefix(room), keys.order_prefix(room), ORDER_RETENTION_S, 10,
            orjson.dumps(ops), b"[0]"]


def place(i: int, deadline: str, *, taken: str | None = None) -> list[object]:
    line: list[object] = [SKU, 1, 9.9] if taken is None else [SKU, 1, 9.9, taken]
    return ["place", f"o{i}", f"v{i}", deadline, [line], "", "", "", 0]


# Server time per order, from Redis' own counters: what one core spends, free of the
# Python client's per-call cost (which dominates the wall-clock rows on a busy machine).
SERVER_US: dict[str, float] = {}


async def timed(n: int, calls: Callable[[Redis], Awaitable[None]], redis: Redis,
                name: str = "") -> float:
    await redis.config_resetstat()
    started = time.perf_counter()
    await calls(redis)
    rate = n / (time.perf_counter() - started)
    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    SERVER_US[name] = float(stats.get("usec", 0)) / n
    return rate


async def one_slot(redis: Redis, n: int, *, per_call: int) -> float:
    room = f"hot-{uuid.uuid4().hex[:6]}"
    inventory = Inventory(redis)
    await inventory.run(room, [["set", "s", SKU, n // 2, "", "", ""]], ts=now_ms())
    script = redis.register_script(APPLY)
    deadline = str(now_ms() + 900_000)

    async def calls(r: Redis) -> None:
        ops = [place(i, deadline) for i in range(n)]
        chunks = [ops[lo:lo + per_call] for lo in range(0, n, per_call)]
        for lo in range(0, len(chunks), DEPTH):
            async with r.pipeline(transaction=False) as pipe:
                for chunk in chunks[lo:lo + DEPTH]:
                    await script(keys=room_keys(room), args=room_args(room, chunk), client=pipe)
                await pipe.execute()

    return await timed(n, calls, redis, f"one_slot_{per_call}")


async def room_record(redis: Redis, n: int) -> float:
    """APPLY `place` with the line's buckets given: the room slot's share of an order."""
    room = f"rec-{uuid.uuid4().hex[:6]}"
    inventory = Inventory(redis)
    await inventory.run(room, [["set", "s", SKU, n // 2, "", "", "8"]], ts=now_ms())
    script = redis.register_script(APPLY)
    deadline = str(now_ms() + 900_000)

    async def calls(r: Redis) -> None:
        # Half sell out, as in the other rows: those lines come back short ('').
        ops = [place(i, deadline, taken=str(i % 8) if i < n // 2 else '') for i in range(n)]
        async with r.pipeline(transaction=False) as pipe:
            for lo in range(0, n, OPS_PER_CALL):
                await script(keys=room_keys(room), args=room_args(room, ops[lo:lo + OPS_PER_CALL]),
                             client=pipe)
            await pipe.execute()

    return await timed(n, calls, redis, "room_record")


async def buckets(redis: Redis, n: int, count: int) -> float:
    room = f"bk-{uuid.uuid4().hex[:6]}"
    script = redis.register_script(BUCKET)
    async with redis.pipeline(transaction=False) as pipe:
        for b, share in enumerate(shares(n // 2, count)):
            await script(keys=[keys.bucket_stock(room, SKU, b), keys.bucket_orders(room, SKU, b),
                               keys.bucket_sets(room, SKU, b)],
                         args=[ORDER_RETENTION_S, orjson.dumps([["set", "s", share]])],
                         client=pipe)
        await pipe.execute()

    async def calls(r: Redis) -> None:
        for lo in range(0, n, DEPTH):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(lo, min(n, lo + DEPTH)):
                    b = home(f"o{i}", count)
                    await script(keys=[keys.bucket_stock(room, SKU, b),
                                       keys.bucket_orders(room, SKU, b),
                                       keys.bucket_sets(room, SKU, b)],
                                 args=[ORDER_RETENTION_S, orjson.dumps([["take", f"o{i}", 1]])],
                                 client=pipe)
                await pipe.execute()

    return await timed(n, calls, redis, f"buckets_{count}")


async def main(args: argparse.Namespace) -> None:
    stack = EmbeddedStack()
    url = args.redis_url
    if url is None:
        await stack.start(kafka=False)
        url = stack.redis_url
    redis = Redis.from_url(url)
    try:
        figures: dict[str, object] = {
            "orders": args.orders, "buckets": args.buckets,
            "one_slot_per_order": await one_slot(redis, args.orders, per_call=1),
            "one_slot_batched": await one_slot(redis, args.orders, per_call=OPS_PER_CALL),
            "one_bucket_per_order": await buckets(redis, args.orders, 1),
            "n_buckets_per_order": await buckets(redis, args.orders, args.buckets),
            "room_record_batched": await room_record(redis, args.orders),
        }
    finally:
        await redis.aclose()
        await stack.stop()
    for name, value in figures.items():
        if isinstance(value, float):
            figures[name] = round(value)
    figures["server_us_per_order"] = {k: round(v, 2) for k, v in SERVER_US.items()}
    emit(figures, args.json)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40_000)
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--json", type=Path, default=None)
    asyncio.run(main(parser.parse_args()))
