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

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path

from common import show_from_args, spent, valkey_alone

from stream.core.topics import Topics, partition_for
from stream.engine.replay import replay
from stream.engine.rules import load_dir
from stream.store.roomlog import HostLog, RoomLog
from stream.worker.delivery import Delivery

PARTITIONS = 8
ROUND = 5000


async def _acked() -> None:
    return None


async def main() -> None:
    room = "bench-delivery"
    args, events = show_from_args(__doc__ or "", room)
    effects = replay(events, room_id=room, rules=load_dir(Path("rules").resolve()))
    pairs = [(partition_for(e.viewer_id, PARTITIONS), e) for e in effects]
    records = 0

    async def send(topic: str, partition: int,
                   batch: Sequence[tuple[bytes | None, bytes]]) -> Awaitable[object]:
        nonlocal records
        records += len(batch)
        return _acked()

    async with valkey_alone() as redis:
        rooms = RoomLog(redis)
        await HostLog(redis).append([e for e in events if type(e).role == "host"])
        await rooms.refresh([room])
        delivery = Delivery(redis=redis, rooms=rooms, send=send, topics=Topics("lc."),
                            bootstrap="")
        async with spent(redis, profile=args.profile) as took:
            for i in range(0, len(pairs), ROUND):
                delivery.add(pairs[i:i + ROUND])
                await delivery.settle(range(PARTITIONS))
        print(f"{len(pairs):,} effects ({records:,} records) in {took.wall:.2f} s; CPU: this "
              f"process {took.cpu:.2f} s ({took.cpu / len(pairs) * 1e6:.2f} us an effect), "
              f"valkey {took.valkey:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
