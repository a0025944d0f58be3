"""The presence handler alone on a fresh valkey: the viewer benchmark's show through
`Presence.handle`, 8 envelopes of 500 a batch (one per partition, as a worker takes them).

    .venv/bin/python bench/presence.py [--viewers 20000] [--minutes 30] [--profile]

Prints events/s and the CPU seconds valkey and this process spent: on a shared machine
the CPU seconds say more than the wall clock (issue 19: a load average of 10-18 moved the
wall-clock figures by 3x, the CPU seconds by about 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from stream.core.batch import Part, Record
from stream.core.models import Event
from stream.core.topics import Topics, key_of, partition_for
from stream.local import showplan
from stream.local.embedded import EmbeddedStack
from stream.store.connect import connect
from stream.store.presence import Presence

PARTITIONS = 8
ENVELOPE = 500


def batches(events: list[Event]) -> list[list[Part]]:
    topics = Topics("lc.")
    grouped: dict[tuple[str, int], list[Event]] = {}
    for e in events:
        key = (topics.for_role(type(e).role), partition_for(key_of(e), PARTITIONS))
        grouped.setdefault(key, []).append(e)
    parts = [Part(Record(topic, p, i // ENVELOPE, b""), chunk,
                  frozenset(e.room_id for e in chunk))
             for (topic, p), evs in grouped.items()
             for i in range(0, len(evs), ENVELOPE) if (chunk := evs[i:i + ENVELOPE])]
    parts.sort(key=lambda pt: (pt.record.offset, pt.record.topic, pt.record.partition))
    return [parts[i:i + PARTITIONS] for i in range(0, len(parts), PARTITIONS)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    plan = showplan.plan_for(room_id="bench-presence", viewers=args.viewers,
                              duration_s=args.minutes * 60, speed=1, seed=7)
    events = [e for _, e in showplan.broadcast(plan)]
    work = batches(events)
    stack = EmbeddedStack()
    await stack.start(kafka=False)
    try:
        redis = await connect(stack.redis_url)
        presence = Presence(redis)
        profile = cProfile.Profile() if args.profile else None
        before, cpu = await redis.info("cpu"), time.process_time()
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        for batch in work:  # computed and written in turn: the write is not behind here
            write = await presence.prepare(batch)
            if write is not None:
                await write()
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - started
        after, cpu = await redis.info("cpu"), time.process_time() - cpu
        valkey = sum(after[k] - before[k] for k in ("used_cpu_user", "used_cpu_sys"))
        print(f"{len(events):,} events in {wall:.2f} s: {len(events) / wall:,.0f} events/s; "
              f"CPU: valkey {valkey:.2f} s, this process {cpu:.2f} s")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        await redis.aclose()
    finally:
        await stack.stop()


if __name__ == "__main__":
    asyncio.run(main())
