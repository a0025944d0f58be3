"""Records a fetch skipped, read again before the records after them are processed.

tansu 0.6 (the embedded broker) can answer a fetch with a record batch written after one
it does not show yet, when two producers write one partition at once; the consumer then
moves past the record it never saw, and commits past it. Four producers on two
partitions for 15 s: a bare aiokafka consumer skipped 16 of 35,530 records, in 6 runs of
2-3 offsets, and every one was in the log when read again afterwards. In a show it was
an order with no result, an event never counted, a `viewer.left` never seen (so a dwell
nudge the viewer had cancelled). Offsets of one partition are consecutive unless a
broker compacts the topic or writes transaction markers, which this system's producers
never ask for; so a jump in the offsets a worker is handed is such a skip.

`missing` finds the jumps (pure); `fill` reads them with a consumer of its own and puts
the records in place, in offset order; `Reader` is a consumer's `getmany` with `fill`
after it, for the readers that are not the worker (the takeover's look for a dead
worker's sends, `rules backtest`, the tests' reader of order results). Offsets that
stay missing for `FILL_TIMEOUT_S` (a real gap: a compacted topic, a transaction marker)
are logged and passed over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.core.batch import Record

# The skipped records were readable again within one fetch (20 ms) in every case seen;
# a second is ample, and a real gap costs that wait once.
FILL_TIMEOUT_S = 1.0

log = logging.getLogger(__name__)

Gap = tuple[str, int, int, int]  # topic, partition, first missing offset, next one present
Expected = Callable[[str, int], int | None]  # (topic, partition) -> the next offset, if known


def missing(records: Sequence[Record], expected: Expected) -> list[Gap]:
    """The offset ranges skipped before or between `records`, per topic-partition.

    `expected(topic, partition)`: the next offset the partition should hand over (None:
    unknown, so it starts wherever its first record is)."""
    nexts: dict[tuple[str, int], int | None] = {}
    gaps: list[Gap] = []
    for r in records:
        tp = (r.topic, r.partition)
        want = nexts[tp] if tp in nexts else expected(r.topic, r.partition)
        if want is not None and r.offset > want:
            gaps.append((r.topic, r.partition, want, r.offset))
        nexts[tp] = max(r.offset + 1, want or 0)
    return gaps


def merged(records: Sequence[Record], found: Sequence[Record]) -> list[Record]:
    """`records` with `found` put in place: each partition's records in offset order,
    the order across partitions kept otherwise (a found record goes just before the
    record that came after its gap)."""
    if not found:
        return list(records)
    by_tp: dict[tuple[str, int], list[Record]] = {}
    for r in sorted(found, key=lambda r: r.offset):
        by_tp.setdefault((r.topic, r.partition), []).append(r)
    out: list[Record] = []
    for r in records:
        waiting = by_tp.get((r.topic, r.partition))
        while waiting and waiting[0].offset < r.offset:
            out.append(waiting.pop(0))
        out.append(r)
    for rest in by_tp.values():  # a gap after the partition's last record: none (`missing`)
        out += rest
    return out


async def fill(records: Sequence[Record], expected: Expected, *,
               bootstrap: str, timeout_s: float = FILL_TIMEOUT_S) -> list[Record]:
    """`records` with whatever was skipped before or between them read and put in place."""
    gaps = missing(records, expected)
    if not gaps:
        return list(records)
    first = records[0]
    found = await read(gaps, bootstrap=bootstrap, timeout_s=timeout_s,
                       generation=first.generation, taken=first.taken)
    got = {(r.topic, r.partition, r.offset) for r in found}
    lost = sum(1 for topic, p, start, end in gaps for o in range(start, end)
               if (topic, p, o) not in got)
    # Seen once at a rebalance (the consumer re-sought while a Redis outage held the
    # batch): whatever the cause, reading the offsets again is safe (each effect is
    # idempotent by record), so the line says what was missing, not why.
    log.warning("offsets missing from what the consumer handed over (%s): read %d of %d "
                "again%s", ", ".join(f"{t}:{p} {start}-{end - 1}" for t, p, start, end in gaps),
                len(found), sum(end - start for _, _, start, end in gaps),
                f"; {lost} not there after {timeout_s:.0f} s, passed over" if lost else "")
    return merged(records, found)


class Reader:
    """`getmany` on an assigned or subscribed consumer, with skipped records filled in.

    `nexts` holds the next offset expected per partition; a partition not in it starts
    at `start` (None: wherever its first record is)."""

    def __init__(self, consumer: AIOKafkaConsumer, *, bootstrap: str,
                 nexts: dict[TopicPartition, int] | None = None,
                 start: int | None = None) -> None:
        self.consumer = consumer
        self.nexts = nexts if nexts is not None else {}
        self._bootstrap = bootstrap
        self._start = start

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int) -> list[Record]:
        """The next records of `partitions` (all assigned, if none given), in offset order
        per partition, none skipped."""
        batches = await self.consumer.getmany(*partitions, timeout_ms=timeout_ms)
        records = await fill([Record(tp.topic, tp.partition, r.offset, r.value)
                              for tp, rows in batches.items() for r in rows],
                             self._expected, bootstrap=self._bootstrap)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self.nexts[tp] = max(self.nexts.get(tp, 0), r.offset + 1)
        return records

    def _expected(self, topic: str, partition: int) -> int | None:
        return self.nexts.get(TopicPartition(topic, partition), self._start)


async def read(gaps: Sequence[Gap], *, bootstrap: str, timeout_s: float,
               generation: int = 0, taken: float = 0.0) -> list[Record]:
    """The records in `gaps`, as far as the broker has them within `timeout_s`."""
    want = {(t, p, o) for t, p, start, end in gaps for o in range(start, end)}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    found: dict[tuple[str, int, int], Record] = {}
    try:
        tps = sorted({TopicPartition(t, p) for t, p, _, _ in gaps})
        consumer.assign(tps)
        deadline = time.monotonic() + timeout_s
        while len(found) < len(want) and time.monotonic() < deadline:
            # From the first offset still missing: this read may skip, too.
            for tp in tps:
                left = [o for t, p, o in want - found.keys() if (t, p) == tp]
                if left:
                    consumer.seek(tp, min(left))
            try:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=100), timeout_s)
            except TimeoutError:
                break
            for tp, rows in batch.items():
                for row in rows:
                    key = (tp.topic, tp.partition, row.offset)
                    if key in want:
                        found[key] = Record(tp.topic, tp.partition, row.offset, row.value,
                                            generation, taken)
    finally:
        await consumer.stop()
    return list(found.values())
