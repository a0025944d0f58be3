"""The presence handler alone on a fresh valkey: the viewer benchmark's show through
`Presence.handle`, 8 envelopes of 500 a batch (one per partition, as a worker takes them).

    .venv/bin/python bench/presence.py [--viewers 20000] [--minutes 30] [--profile]

Prints events/s and the CPU seconds valkey and this process spent: on a shared machine
the CPU seconds say more than the wall clock (issue 19: a load average of 10-18 moved the
wall-clock figures by 3x, the CPU seconds by about 10%).
"""

from __future__ import annotations

import asyncio

from common import show_from_args, spent, valkey_alone

from stream.core.batch import Part, Record
from stream.core.models import Event
from stream.core.topics import Topics, key_of, partition_for
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
    args, events = show_from_args(__doc__ or "", "bench-presence")
    work = batches(events)
    async with valkey_alone() as redis:
        presence = Presence(redis)
        async with spent(redis, profile=args.profile) as took:
            for batch in work:  # computed and written in turn: the write is not behind here
                write = await presence.prepare(batch)
                if write is not None:
                    await write()
        print(f"{len(events):,} events in {took.wall:.2f} s: {len(events) / took.wall:,.0f} "
              f"events/s; CPU: valkey {took.valkey:.2f} s, this process {took.cpu:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
