"""Viewer events through the whole worker against a raw aiokafka consumer, in one run.

    .venv/bin/python bench/viewer_engine.py [--viewers 20000] [--minutes 30]

A simulated broadcast's events are written twice to a fresh embedded broker:
1. one event per record, keyed by viewer (what a plain Kafka client would write), read
   back by a bare aiokafka consumer that does nothing with them: the ceiling;
2. as the gateway writes them: envelopes of up to 500 events of one partition. A
   worker process then consumes them through the full path (decode, dead letters,
   inventory, host log, viewer engine with its Redis state, nudges, tags, counters).
Timing starts at the first processed event, so the group join is not counted, and ends
when every event is counted and the effects' counts (claimed behind the engine) have
stopped changing. The state per viewer is read from Redis afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from common import emit
from redis.asyncio import Redis

from stream.core.codec import encode, envelope
from stream.core.config import from_env
from stream.core.models import (
    BroadcastEnded,
    Event,
    HostEvent,
    Nudge,
    OrderPlaced,
    StockSet,
    TagChange,
)
from stream.core.topics import Topics, key_of, partition_for
from stream.engine.replay import replay
from stream.engine.rules import load_dir
from stream.local import showplan
from stream.local.embedded import EmbeddedStack
from stream.local.runner import spawn, stop_processes
from stream.store import keys
from stream.store.inventory import Inventory
from stream.store.ledger import read_stats
from stream.store.roomlog import HostLog
from stream.worker.admin import ensure_topics
from stream.worker.engagement import GRACE_MS

PARTITIONS = 8
ENVELOPE = 500
QUIET_S = 0.5
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, *, thread: int | None = None) -> float | None:
    """CPU seconds (user + system) a process, or one of its threads, has used so far;
    None where /proc is not there (not Linux). Beside the rate, the worker's CPU per event
    and its main thread's busy share tell a change that removed work from one that only
    moved a wait (session 21: the rate moved 42-76k events/s over one quiet hour on the
    same code, and the busy share stayed at 62-73% whatever was changed)."""
    path = Path(f"/proc/{pid}") / (f"task/{thread}" if thread else "") / "stat"
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def cpu_now(pid: int) -> tuple[float | None, float | None]:
    """(the whole process's, its main thread's) CPU seconds so far."""
    return cpu_s(pid), cpu_s(pid, thread=pid)


def _effects(stats: dict[str, int | float]) -> int:
    """Effects claimed so far: nudges, tag changes, suppressions, follow-ups."""
    return int(sum(v for k, v in stats.items()
                   if k in ("nudges", "tags", "tags_removed", "followups")
                   or k.startswith("suppressed:")))


def offline(events: list[Event], *, rules: Path,
            nudged: set[tuple[str, str]] | None = None) -> dict[str, int]:
    """The effects of the same log through the pure engine, replayed as `rules backtest`
    replays it (stream/engine/replay.py: stock levels by event time from the log), the
    clock stopped just past the show's end and its grace: the end's tags are decided,
    off-air reminders long after it are not (the worker is stopped before them). A
    check that speed changed nothing. `nudged` collects (viewer, rule) of each nudge."""
    room_id = events[0].room_id
    ended = max(e.ts for e in events if isinstance(e, BroadcastEnded))
    counts = {"nudges": 0, "tags": 0, "tags_removed": 0}
    for effect in replay(events, room_id=room_id, rules=load_dir(rules), grace_ms=GRACE_MS,
                         until=ended + 2 * GRACE_MS + 1):
        if isinstance(effect, Nudge):
            counts["nudges"] += 1
            if nudged is not None:
                nudged.add((effect.viewer_id, effect.rule_id))
        elif isinstance(effect, TagChange):
            counts["tags" if effect.op == "add" else "tags_removed"] += 1
    return counts


def off_by(extra: list[Nudge], events: list[Event]) -> dict[str, dict[str, int]]:
    """The nudges sent that offline does not send, counted by rule, by the viewer's
    partition, by minute of show, and by whether the viewer had placed an order before
    the nudge's time: where to look when a run is off."""
    start = min(e.ts for e in events)
    placed: dict[str, int] = {}
    for e in events:
        if isinstance(e, OrderPlaced):
            placed[e.viewer_id] = min(e.ts, placed.get(e.viewer_id, e.ts))
    out: dict[str, dict[str, int]] = {"rule": {}, "partition": {}, "minute": {},
                                      "ordered_before": {}}
    for n in extra:
        for axis, value in (("rule", n.rule_id),
                            ("partition", str(partition_for(n.viewer_id, PARTITIONS))),
                            ("minute", str((n.ts - start) // 60_000)),
                            ("ordered_before", str(placed.get(n.viewer_id, n.ts + 1) <= n.ts))):
            out[axis][value] = out[axis].get(value, 0) + 1
    return {axis: dict(sorted(counts.items())) for axis, counts in out.items()}


async def produce(bootstrap: str, records: list[tuple[str, int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=1 << 20, max_request_size=4 << 20)
    await producer.start()
    try:
        pending = []
        for topic, partition, value in records:
            pending.append(await producer.send(topic, value, partition=partition))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def nudges_sent(bootstrap: str, topic: str) -> dict[tuple[str, str], Nudge]:
    """(viewer, rule) -> its nudge, of every nudge on `topic`, read to its end."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: dict[tuple[str, str], Nudge] = {}
    try:
        end = sum((await consumer.end_offsets(list(consumer.assignment()))).values())
        seen = 0
        while seen < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen += len(records)
                for r in records:
                    n = msgspec.json.decode(r.value, type=Nudge)
                    out[n.viewer_id, n.rule_id] = n
    finally:
        await consumer.stop()
    return out


async def raw_consume(bootstrap: str, topics: list[str], n: int) -> float:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    seen, started = 0, None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            if started is None and batch:
                started = time.perf_counter()
            seen += sum(len(r) for r in batch.values())
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - (started or time.perf_counter()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    room = "bench-room"
    plan = showplan.plan_for(room_id=room, viewers=args.viewers, duration_s=args.minutes * 60,
                              speed=1, seed=7)
    events = [e for _, e in showplan.broadcast(plan)]
    raw_topics, lc_topics = Topics("raw."), Topics("lc.")
    async with EmbeddedStack() as stack:
        for t in (raw_topics, lc_topics):
            await ensure_topics(stack.kafka_bootstrap, t, partitions=PARTITIONS)
        singles = [(raw_topics.for_role(type(e).role),
                    partition_for(key_of(e), PARTITIONS), encode(e)) for e in events]
        grouped: dict[tuple[str, int], list[bytes]] = {}
        for e in events:
            key = (lc_topics.for_role(type(e).role), partition_for(key_of(e), PARTITIONS))
            grouped.setdefault(key, []).append(encode(e))
        envelopes = [(topic, p, envelope(parts[i:i + ENVELOPE]))
                     for (topic, p), parts in grouped.items()
                     for i in range(0, len(parts), ENVELOPE)]
        print(f"{len(events):,} events of {args.viewers:,} viewers; "
              f"{len(envelopes):,} envelopes", flush=True)
        await produce(stack.kafka_bootstrap, singles)
        raw = await raw_consume(stack.kafka_bootstrap, list(raw_topics.inputs), len(singles))
        await produce(stack.kafka_bootstrap, envelopes)

        settings = from_env(kafka_url=stack.kafka_url, redis_url=stack.redis_url,
                            partitions=PARTITIONS, rules_dir=Path("rules").resolve())
        redis = Redis.from_url(stack.redis_url)
        # As the gateway does before its 202 (docs/decisions.md, "Orders never run ahead of their
        # stock"): the host log and the stock loads. Written straight to Kafka they raced
        # the orders, and a worker that read the orders first refused them all (6,962
        # nudges: no stock sold).
        await HostLog(redis).append([e for e in events if isinstance(e, HostEvent)])
        await Inventory(redis).load([e for e in events if isinstance(e, StockSet)])
        worker = spawn(["worker"], settings, Path(tempfile.gettempdir()) / "lc-bench-worker.log")
        try:
            started = None
            cpu0: tuple[float | None, float | None] = (None, None)
            while True:
                done = (await read_stats(redis, room)).get("events", 0)
                if started is None and done:
                    started, first = time.perf_counter(), done
                    cpu0 = cpu_now(worker.pid)
                if done >= len(events):
                    break
                if worker.poll() is not None:
                    raise RuntimeError("worker died")
                await asyncio.sleep(0.05)
            # Effects are claimed (and counted) behind the engine: the clock stops at the
            # last change of their counts, once they have been still for QUIET_S.
            end, effects = time.perf_counter(), _effects(await read_stats(redis, room))
            cpu1 = cpu_now(worker.pid)
            while time.perf_counter() - end < QUIET_S:
                await asyncio.sleep(0.02)
                now = _effects(await read_stats(redis, room))
                if now != effects:
                    end, effects = time.perf_counter(), now
                    cpu1 = cpu_now(worker.pid)
            full = (len(events) - first) / (end - started)
            # From the first count to the last change of the effects' counts, as the rate.
            used = [None if a is None or b is None else b - a
                    for a, b in zip(cpu0, cpu1, strict=True)]
            stats = await read_stats(redis, room)
            sent = await nudges_sent(stack.kafka_bootstrap, lc_topics.nudges)
            sizes = []
            for p in range(PARTITIONS):
                sizes += [len(v) for v in (await redis.hgetall(
                    keys.viewer_states(lc_topics.prefix, p))).values()]
        finally:
            await stop_processes([worker])
            await redis.aclose()
    expected: set[tuple[str, str]] = set()
    figures: dict[str, object] = {
        "events": len(events), "viewers": args.viewers,
        "worker_events_per_s": round(full), "raw_aiokafka_records_per_s": round(raw),
        "ratio": round(full / raw, 3),
        # CPU per event of the worker process (all threads) and of its main thread (the
        # event loop: the engine, delivery, presence, decoding), and how busy that
        # thread was over the measured wall time.
        "worker_cpu_us_per_event": (None if used[0] is None
                                    else round(used[0] / (len(events) - first) * 1e6, 2)),
        "main_thread_cpu_us_per_event": (None if used[1] is None
                                         else round(used[1] / (len(events) - first) * 1e6, 2)),
        "main_thread_busy": (None if used[1] is None
                             else round(used[1] / (end - started), 2)),
        "state_bytes_per_viewer_mean": round(statistics.fmean(sizes)) if sizes else None,
        "state_bytes_per_viewer_max": max(sizes) if sizes else None,
        "nudges": stats.get("nudges", 0), "tags": stats.get("tags", 0),
        "tags_removed": stats.get("tags_removed", 0),
        "offline": offline(events, rules=settings.rules_dir, nudged=expected),
        # The room's own counts beside them (orders by outcome, suppressions by reason):
        # what a run whose nudges are off differs in, for the next one to trace.
        "room_counts": {k: v for k, v in sorted(stats.items())
                        if not k.startswith(("m:", "ev:", "s:")) and isinstance(v, int)},
    }
    # One by one: a backlog's stock-aware nudges once moved from run to run by thousands.
    extra = [sent[k] for k in sent.keys() - expected]
    figures["nudges_not_offline"] = len(extra)
    figures["offline_nudges_not_sent"] = len(expected - sent.keys())
    figures["not_offline_by"] = off_by(extra, events)
    print(f"worker, full path, envelopes of {ENVELOPE}: {full:,.0f} events/s")
    print(f"raw aiokafka consumer, one event per record: {raw:,.0f} records/s")
    print(f"ratio: {full / raw:.2f} (target >= 0.3, issue 19)")
    if used[1] is not None:
        print(f"worker CPU per event: {figures['worker_cpu_us_per_event']} us, of which "
              f"the main thread {figures['main_thread_cpu_us_per_event']} us (busy "
              f"{figures['main_thread_busy']:.0%} of the measured time)")
    print(f"state per viewer: mean {figures['state_bytes_per_viewer_mean']} B, "
          f"max {figures['state_bytes_per_viewer_max']} B (target <= 1 KB)")
    print(f"effects: {figures['nudges']:,} nudges, {figures['tags']:,} tags added, "
          f"{figures['tags_removed']:,} removed; the same log replayed offline through "
          f"the engine: {figures['offline']}; nudges sent that offline does not send: "
          f"{figures['nudges_not_offline']:,}, offline ones not sent: "
          f"{figures['offline_nudges_not_sent']:,}")
    emit(figures, args.json)


if __name__ == "__main__":
    asyncio.run(main())
