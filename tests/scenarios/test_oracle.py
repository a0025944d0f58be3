"""A broadcast of 2,000 viewers through the real stack with a worker killed with -9
mid-show, checked against the event log as Kafka holds it. The same show without the kill
runs on the Redis Cluster through two gateways (test_cluster.py); a single-node run of it
here took 40 s of the suite and checked nothing the two do not.

- Reference model (tests/reference, a second plain implementation of the rules, not the
  engine): every nudge, tag record and follow-up it calls for is on the output topics,
  and nothing else (soundness and completeness); the current tags answer agrees.
- Brute force, independent of both: every dwell nudge has its 3 minutes of focus in the
  log and no order of that SKU before it fires; interaction, source and visitor tags
  are exactly what the log says.
- No effect twice on the output topics, whatever the kill did.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
from aiohttp import ClientSession
from aiokafka import AIOKafkaConsumer
from helpers import (
    assert_nothing_twice,
    kill_mattered,
    orders_read,
    read_all,
    running_gateway,
    show_stats,
    uncommitted,
    uncounted,
)
from reference.compare import differences
from reference.compare import held as held_by
from reference.kafkalog import inputs
from reference.model import expect
from reference.room import room_of

from stream.core.codec import decode_events
from stream.core.config import Settings
from stream.core.models import (
    BroadcastStarted,
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
from stream.core.topics import Topics
from stream.engine.rules import load_dir
from stream.local import sender, showplan
from stream.local.runner import spawn, spawn_gateway, stop_processes
from stream.store import keys
from stream.store.connect import connect
from stream.store.currenttags import held_tags
from stream.worker.statusfile import path_for, read_status

# No rerun: the simulator's platform stream trailing its commerce stream by more than
# the grace (up to 7 s of show at this speed on a busy machine) once fired a dwell
# nudge that a late view cancels; timers now run on the watermark over both inputs
# (stream/engine/watermark.py, tests/unit/test_watermark.py).
pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"
SPEED = 10
# A timer fires this long (event time) after it is due (docs/decisions.md: Timers on
# event time, with grace); said here, not imported, so the test does not read the engine.
GRACE_S = 3


async def accepted_by(url: str) -> int:
    """The events a gateway process says it accepted (`lc_gateway_events_total`)."""
    async with ClientSession() as http, http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    found = re.search(r'^lc_gateway_events_total\{outcome="accepted"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


class Show(msgspec.Struct, kw_only=True):
    """What a show left: its effects, its inputs, the tags held at the end, and (after a
    kill) the wall time the survivors last started a partition, the takeover's end."""

    nudges: list[Nudge]
    tags: list[TagChange]
    follows: list[FollowUp]
    hosts: list[HostEvent]
    by_partition: dict[int, list[ViewerEvent]]
    held: dict[str, set[tuple[str, str]]]
    taken_over: float | None


async def run_show(settings: Settings, tmp_path: Path, *, kill: bool, room_id: str, seed: int,
                   gateways: int = 1) -> Show:
    """2,000 viewers, a 5-minute show at 10x, through 2 workers (one killed if `kill`)
    and `gateways` gateways (this process's, then `livecommerce gateway` children), the
    viewers spread over them."""
    settings = msgspec.structs.replace(settings, rules_dir=RULES,
                                       status_dir=tmp_path / "status")
    topics = Topics(settings.topic_prefix)
    async with running_gateway(settings) as (_, url, tokens):
        redis = await connect(settings.redis_url)
        workers = [spawn(["worker"], settings, tmp_path / f"w{i}.log") for i in range(2)]
        children: list[subprocess.Popen[bytes]] = []
        taken_over = None
        plan = showplan.plan_for(room_id=room_id, viewers=2000, duration_s=30, speed=SPEED,
                                  seed=seed)
        try:
            urls = [url]
            if gateways > 1:  # one deployment: the children read this gateway's tokens
                tokens.save(tmp_path / "tokens.json")
                shared = msgspec.structs.replace(settings, tokens_file=tmp_path / "tokens.json")
                for n in range(2, gateways + 1):
                    proc, other = await spawn_gateway(shared, tmp_path / f"gateway-{n}.log")
                    children.append(proc)
                    urls.append(other)
            show = asyncio.create_task(sender.run(plan, gateway=urls,
                                                     tokens=tokens, progress=False))
            if kill:
                await asyncio.sleep(20)  # well into the show
                killed_at = time.time()
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                workers.append(spawn(["worker"], settings, tmp_path / "w2.log"))
            sent = await show
            assert sent.rejected == 0, sent.errors
            for other in urls[1:]:  # each gateway took its share of the viewers
                assert await accepted_by(other) > 0, f"{other} accepted nothing"
            deadline = time.monotonic() + 90
            while True:  # every event processed, and the end-of-show follow-ups out
                stats = await show_stats(redis, room_id)
                joined = stats.get("ev:viewer.joined", 0)
                if (stats.get("events", 0) >= sent.accepted
                        and stats.get("followups", 0) >= joined):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"not settled: {stats.get('events')} of {sent.accepted} events, "
                        f"{stats.get('followups')} of {joined} follow-ups; in the log vs "
                        f"counted, per type: {await uncounted(settings, stats)}; "
                        f"uncommitted: {await uncommitted(settings)}; order partitions "
                        f"as told: {await orders_read(settings, redis)}")
                await asyncio.sleep(0.5)
            if kill:  # the kill had work at stake: the victim's partitions, re-read
                assert settings.status_dir is not None
                statuses = [read_status(path_for(settings.status_dir, w.pid)) for w in workers]
                assert kill_mattered(statuses[0], statuses[1:], killed_at=killed_at) == []
                taken_over = max(s.at for w in statuses[1:] for s in w.starts
                                 if s.at > killed_at)
            # A worker's graceful stop flushes its producer: once every live worker has
            # exited by itself (not SIGKILLed after the grace), all it sent is in Kafka.
            live = [w for w in workers if w.poll() is None]
            await stop_processes(live)
            assert [w.returncode for w in live] == [0] * len(live), "a worker was killed"
        finally:
            await stop_processes(workers + children)
            await redis.aclose()
    outputs = await read_all(settings, [topics.nudges, topics.tags, topics.followups])
    nudges = [msgspec.json.decode(v, type=Nudge) for t, _, _, v in outputs if t == topics.nudges]
    tags = [msgspec.json.decode(v, type=TagChange) for t, _, _, v in outputs if t == topics.tags]
    follows = [msgspec.json.decode(v, type=FollowUp)
               for t, _, _, v in outputs if t == topics.followups]
    assert nudges and tags and follows
    redis = await connect(settings.redis_url)
    try:  # what GET /v1/viewers/{viewer}/tags answers, for everyone seen
        viewers = {t.viewer_id for t in tags} | {
            v.decode() for v in await redis.hkeys(keys.profiles(room_id))}
        held = {v: {(t, value) for _, t, value in
                    await held_tags(redis, v, partitions=settings.partitions,
                                    deployment=settings.topic_prefix)}
                for v in viewers}
    finally:
        await redis.aclose()
    log = await read_all(settings, list(topics.inputs))
    hosts, by_partition = inputs(log, topics)
    return Show(nudges=nudges, tags=tags, follows=follows, hosts=hosts,
                by_partition=by_partition, held={v: t for v, t in held.items() if t},
                taken_over=taken_over)


async def latest_nudge_s(settings: Settings, *, speed: float, taken_over: float | None,
                         ) -> float:
    """How late the latest nudge fired: wall seconds between the show reaching its due
    time (the broadcast.started record's wall time plus show time / speed), or the
    takeover's end if that came later, and its record reaching Kafka."""
    topics = Topics(settings.topic_prefix)
    consumer = AIOKafkaConsumer(topics.host_events, topics.nudges, group_id=None,
                                bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    records = []
    try:
        want = sum((await consumer.end_offsets(list(consumer.assignment()))).values())
        while len(records) < want:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
    finally:
        await consumer.stop()
    wall0, show0 = next((r.timestamp, e.ts) for r in records if r.topic == topics.host_events
                        for _, e in decode_events(r.value).events
                        if isinstance(e, BroadcastStarted))
    ready = 0.0 if taken_over is None else taken_over * 1000
    return max(r.timestamp - max(wall0 + (n.ts - show0) / speed, ready)
               for r in records if r.topic == topics.nudges
               for n in [msgspec.json.decode(r.value, type=Nudge)]) / 1000


async def test_kill_9_mid_show_matches_oracle(settings: Settings, tmp_path: Path) -> None:
    """A worker killed with -9 mid-show and a new one started: the same effects as
    without the kill, none twice, none lost."""
    await assert_matches_oracle(settings, tmp_path, kill=True, room_id="kill-room", seed=12)


async def assert_matches_oracle(settings: Settings, tmp_path: Path, *, kill: bool,
                                room_id: str, seed: int, gateways: int = 1) -> None:
    # A room (so event ids, viewer ids and counters) of this attempt's own: the plan's
    # ids follow from room and seed, so a rerun on the same Redis was all duplicates
    # (20,819 of 20,819 events refused on the cluster's rerun) and could never pass.
    room_id = f"{room_id}-{uuid.uuid4().hex[:6]}"
    show = await run_show(settings, tmp_path, kill=kill, room_id=room_id, seed=seed,
                          gateways=gateways)
    nudges, tags, follows = show.nudges, show.tags, show.follows
    assert_nothing_twice(nudges, tags, follows)
    # A nudge due while its partition had no owner fires once the takeover ends (the
    # survivors' last start after the kill: the group's 6 s session timeout, then one or
    # two rebalances; a fixed 15 s from the due time failed in CI at 16.5 s). From then,
    # or from its due time, it fires within 10 s: the new owner loads the partition's
    # state, re-reads what the victim left unsaved and looks in Kafka for the effects the
    # victim claimed (3.6, 4.0 and 6.2 s in three runs here at load 2-3). The grace before
    # a timer fires is in event time, 1/SPEED of it in wall.
    late = await latest_nudge_s(settings, speed=SPEED, taken_over=show.taken_over)
    assert late <= 10 + GRACE_S / SPEED, (
        f"a nudge fired {late:.1f} s after its time or the takeover's end")
    hosts, by_partition = show.hosts, show.by_partition
    want = expect(load_dir(RULES), hosts, [e for p in by_partition.values() for e in p])
    ended = room_of(room_id, hosts).ended_at
    assert ended is not None
    # Sound and complete: every record the rules call for, and nothing else. Nudges due
    # after the end are left out on both sides: the run stops a little past it.
    # A known way to fail: the order topic written more than the grace ahead of the viewer
    # topic (0.3 s of wall at 10x; one run here had 175 of 2,305 viewer records written
    # after an order record up to 7.2 s of show ahead). A worker that has read all of the
    # viewer topic holds nothing back, so the order's time fires a dwell that a view just
    # before its due time, not yet in Kafka, would have broken.
    assert differences(want, nudges, tags, follows, until=ended) == []
    assert final_tags(tags) == held_by(want.tags)
    assert show.held == held_by(want.tags)
    brute_force_checks(by_partition, nudges, final_tags(tags))


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
