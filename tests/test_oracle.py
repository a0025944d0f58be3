"""A broadcast of 2,000 viewers through the real stack, checked against the same event
log computed offline; and the same show with a worker killed with -9 mid-show.

- Oracle: the events as Kafka holds them, replayed per partition through a fresh
  ViewerEngine with one final advance: the real outputs must equal it as sets.
- Brute force, independent of the engine: every dwell nudge has its 3 minutes of
  focus in the log and no order of that SKU before it fires; interaction, source
  and visitor tags are exactly what the log says.
- No effect twice on the output topics, whatever the kill did.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
from helpers import assert_nothing_twice, read_all
from redis.asyncio import Redis

from stream import simulator
from stream.admin import ensure_topics
from stream.auth import Tokens
from stream.codec import decode_events
from stream.config import Settings, to_env
from stream.embedded import free_port
from stream.engagement import GRACE_MS
from stream.gateway import Gateway
from stream.ledger import read_stats
from stream.models import (
    Event,
    FollowUp,
    HostEvent,
    Like,
    Nudge,
    OrderPlaced,
    ProductViewed,
    TagChange,
    ViewerEvent,
    ViewerJoined,
    ViewerLeft,
)
from stream.roomlog import fold
from stream.rules import load_dir
from stream.topics import Topics
from stream.viewers import RoomTimeline, ViewerEngine

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[1] / "rules"


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "stream", "worker"],
                            env={**os.environ, **to_env(settings)},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def run_show(settings: Settings, tmp_path: Path, *, kill: bool, room_id: str, seed: int,
                   ) -> tuple[list[Nudge], list[TagChange], list[FollowUp], RoomTimeline,
                              dict[int, list[ViewerEvent]]]:
    """2,000 viewers, a 5-minute show at 10x, through 2 workers (one killed if `kill`)."""
    settings = msgspec.structs.replace(settings, rules_dir=RULES)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, topics, partitions=settings.partitions)
    tokens = Tokens.generate()
    gateway = Gateway(settings, tokens)
    port = free_port()
    await gateway.start(port=port)
    redis = Redis.from_url(settings.redis_url)
    workers = [start_worker(settings, tmp_path / f"w{i}.log") for i in range(2)]
    plan = simulator.plan_for(room_id=room_id, viewers=2000, duration_s=30, speed=10,
                              seed=seed)
    try:
        show = asyncio.create_task(simulator.run(plan, gateway=f"http://127.0.0.1:{port}",
                                                 tokens=tokens, progress=False))
        if kill:
            await asyncio.sleep(20)  # well into the show
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            workers.append(start_worker(settings, tmp_path / "w2.log"))
        sent = await show
        assert sent.rejected == 0, sent.errors
        deadline = time.monotonic() + 90
        while True:  # every event processed, and the end-of-show follow-ups out
            stats = await read_stats(redis, room_id)
            joined = stats.get("ev:viewer.joined", 0)
            if stats.get("events", 0) >= sent.accepted and stats.get("followups", 0) >= joined:
                break
            assert time.monotonic() < deadline, f"not settled: {stats}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # let the last acks land
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        await gateway.stop()
        await redis.aclose()
    outputs = await read_all(settings, [topics.nudges, topics.tags, topics.followups])
    nudges = [msgspec.json.decode(v, type=Nudge) for t, _, _, v in outputs if t == topics.nudges]
    tags = [msgspec.json.decode(v, type=TagChange) for t, _, _, v in outputs if t == topics.tags]
    follows = [msgspec.json.decode(v, type=FollowUp)
               for t, _, _, v in outputs if t == topics.followups]
    assert nudges and tags and follows
    room, by_partition = oracle_inputs(await read_all(settings, list(topics.inputs)), topics,
                                       room_id)
    return nudges, tags, follows, room, by_partition


def as_set(nudges: list[Nudge], until: int) -> set[tuple[str, str, str | None, str, int]]:
    return {(n.viewer_id, n.rule_id, n.sku, n.variant, n.ts) for n in nudges if n.ts <= until}


async def test_stack_matches_oracle(settings: Settings, tmp_path: Path) -> None:
    await assert_matches_oracle(settings, tmp_path, kill=False, room_id="oracle-room", seed=11)


async def test_kill_9_mid_show_matches_oracle(settings: Settings, tmp_path: Path) -> None:
    """A worker killed with -9 mid-show and a new one started: the same effects as
    without the kill, none twice, none lost."""
    await assert_matches_oracle(settings, tmp_path, kill=True, room_id="kill-room", seed=12)


async def assert_matches_oracle(settings: Settings, tmp_path: Path, *, kill: bool,
                                room_id: str, seed: int) -> None:
    nudges, tags, follows, room, by_partition = await run_show(
        settings, tmp_path, kill=kill, room_id=room_id, seed=seed)
    assert_nothing_twice(nudges, tags, follows)
    expected_nudges, expected_tags = oracle(room, by_partition)
    assert room.ended_at is not None
    got = as_set(nudges, room.ended_at)
    want = {n for n in expected_nudges if n[4] <= room.ended_at}
    assert got == want, f"{len(got - want)} extra, e.g. {sorted(got - want)[:2]}; " \
                        f"{len(want - got)} missing, e.g. {sorted(want - got)[:2]}"
    assert final_tags(tags) == expected_tags
    assert len(follows) == len({e.viewer_id for p in by_partition.values() for e in p
                                if isinstance(e, ViewerJoined)})
    brute_force_checks(by_partition, nudges, final_tags(tags))


def oracle_inputs(log: list[tuple[str, int, int, bytes]], topics: Topics,
                  room_id: str) -> tuple[RoomTimeline, dict[int, list[ViewerEvent]]]:
    """The room's timeline and each partition's viewer events, in event-time order."""
    hosts: list[HostEvent] = []
    by_partition: dict[int, list[tuple[int, int, ViewerEvent]]] = defaultdict(list)
    for topic, partition, offset, value in sorted(log, key=lambda r: (r[0], r[1], r[2])):
        for index, event in decode_events(value).events:
            if isinstance(event, HostEvent):
                hosts.append(event)
            elif isinstance(event, ViewerEvent):
                rank = 0 if topic == topics.viewer_events else 1
                by_partition[partition].append((event.ts, rank * 10**9 + offset * 1000 + index,
                                                event))
    room = fold(RoomTimeline(room_id=room_id), sorted(hosts, key=lambda e: e.ts))
    return room, {p: [e for _, _, e in sorted(items, key=lambda x: (x[0], x[1]))]
                  for p, items in by_partition.items()}


def oracle(room: RoomTimeline, by_partition: dict[int, list[ViewerEvent]],
           ) -> tuple[set[tuple[str, str, str | None, str, int]], dict[str, set[tuple[str, str]]]]:
    rules = load_dir(RULES)
    nudges: set[tuple[str, str, str | None, str, int]] = set()
    changes: list[TagChange] = []
    assert room.ended_at is not None
    for events in by_partition.values():
        engine = ViewerEngine(rules, grace_ms=GRACE_MS)
        effects = []
        for event in events:
            effects += engine.apply(event, room)
        effects += engine.advance(room.ended_at + GRACE_MS + 1, {room.room_id: room})
        nudges |= {(e.viewer_id, e.rule_id, e.sku, e.variant, e.ts)
                   for e in effects if isinstance(e, Nudge)}
        changes += [e for e in effects if isinstance(e, TagChange)]
    return nudges, final_tags(changes)


def final_tags(changes: list[TagChange]) -> dict[str, set[tuple[str, str]]]:
    held: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for change in sorted(changes, key=lambda c: c.ts):
        (held[change.viewer_id].add if change.op == "add" else
         held[change.viewer_id].discard)((change.tag, change.value))
    return {v: t for v, t in held.items() if t}


def brute_force_checks(by_partition: dict[int, list[ViewerEvent]], nudges: list[Nudge],
                       tags: dict[str, set[tuple[str, str]]]) -> None:
    """Rule definitions checked straight on the log, without the engine."""
    by_viewer: dict[str, list[Event]] = defaultdict(list)
    for events in by_partition.values():
        for event in events:
            by_viewer[event.viewer_id].append(event)
    for nudge in (n for n in nudges if n.rule_id == "dwell-3min"):
        events = by_viewer[nudge.viewer_id]
        start = nudge.ts - 180_000
        views = [e for e in events if isinstance(e, ProductViewed) and e.ts <= start]
        assert views and views[-1].sku == nudge.sku, f"no focus on {nudge.sku}: {nudge}"
        between = [e for e in events if start < e.ts <= nudge.ts and (
            isinstance(e, ViewerLeft) or (isinstance(e, ProductViewed) and e.sku != nudge.sku))]
        assert not between, f"focus broken before the nudge: {between[0]}"
        assert not [e for e in events if isinstance(e, OrderPlaced) and e.ts <= nudge.ts
                    and any(i.sku == nudge.sku for i in e.items)], f"ordered first: {nudge}"
    for viewer, events in by_viewer.items():
        held = tags.get(viewer, set())
        assert any(isinstance(e, Like) for e in events) == (("interaction", "liked") in held)
        joins = [e for e in events if isinstance(e, ViewerJoined)]
        if joins:
            private = joins[0].source in ("wecom_group", "leader_share", "mini_program")
            assert ("source", "private" if private else "public") in held
            assert ("visitor", "returning" if joins[0].returning else "new") in held
