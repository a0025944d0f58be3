"""Delivery alone on a fresh valkey: the viewer benchmark's effects claimed and built into
Kafka records, in rounds of 5,000 (about what a worker's round holds in that benchmark).

    .venv/bin/python bench/delivery.py [--viewers 20000] [--minutes 30] [--profile]

The effects are the offline replay's (`stream.engine.replay`): nudges, about 110k tag
changes, follow-ups and suppressions. The records go to a collector, not Kafka: what is
measured is this process's CPU per effect (the worker's main thread does this work)
and valkey's. A diagnostic, not in `make bench`: the CPU seconds say more than the wall
clock on a shared machine, and a change to delivery is judged by them, alternating
before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path

from stream.core.topics import Topics, partition_for
from stream.engine.replay import replay
from stream.engine.rules import load_dir
from stream.local import showplan
from stream.local.embedded import EmbeddedStack
from stream.store.connect import connect
from stream.store.roomlog import HostLog, RoomLog
from stream.worker.delivery import Delivery

PARTITIONS = 8
ROUND = 5000


async def _acked() -> None:
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    room = "bench-delivery"
    plan = showplan.plan_for(room_id=room, viewers=args.viewers,
                              duration_s=args.minutes * 60, speed=1, seed=7)
    events = [e for _, e in showplan.broadcast(plan)]
    effects = replay(events, room_id=room, rules=load_dir(Path("rules").resolve()))
    pairs = [(partition_for(e.viewer_id, PARTITIONS), e) for e in effects]
    records = 0

    async def send(topic: str, partition: int,
                   batch: Sequence[tuple[bytes | None, bytes]]) -> Awaitable[object]:
        nonlocal records
        records += len(batch)
        return _acked()

    stack = EmbeddedStack()
    await stack.start(kafka=False)
    try:
        redis = await connect(stack.redis_url)
        rooms = RoomLog(redis)
        await HostLog(redis).append([e for e in events if type(e).role == "host"])
        await rooms.refresh([room])
        delivery = Delivery(redis=redis, rooms=rooms, send=send, topics=Topics("lc."),
                            bootstrap="")
        profile = cProfile.Profile() if args.profile else None
        before, cpu = await redis.info("cpu"), time.process_time()
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        for i in range(0, len(pairs), ROUND):
            delivery.add(pairs[i:i + ROUND])
            await delivery.settle(range(PARTITIONS))
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - started
        after, cpu = await redis.info("cpu"), time.process_time() - cpu
        valkey = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
        print(f"{len(pairs):,} effects ({records:,} records) in {wall:.2f} s; CPU: this "
              f"process {cpu:.2f} s ({cpu / len(pairs) * 1e6:.2f} us an effect), valkey "
              f"{valkey:.2f} s")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        await redis.aclose()
    finally:
        await stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
