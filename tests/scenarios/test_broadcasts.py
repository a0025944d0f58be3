"""Each show on its own books: the same show run under three room ids at once on one
system, by the same viewers, fires the same nudges and tags in each room, each room's
exactly what the reference model (tests/reference) calls for from that room's events
alone. A room live on several evenings, each broadcast on its own books, is
tests/scenarios/test_aftershow.py's three-show review test."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from helpers import read_all, show_stats
from reference.compare import differences
from reference.kafkalog import inputs
from reference.model import expect
from reference.room import room_of
from test_oracle import RULES, SPEED

from stream.core.config import Settings
from stream.core.models import BroadcastStarted, FollowUp, Nudge, TagChange
from stream.core.topics import Topics
from stream.engine.rules import load_dir
from stream.local import sender, showplan
from stream.local.runner import running

pytestmark = pytest.mark.integration


async def test_the_same_show_in_three_rooms_fires_the_same_in_each(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, rules_dir=RULES)
    topics = Topics(settings.topic_prefix)
    rooms = [f"store-{i}-{int(time.time())}" for i in range(3)]
    async with running(settings, workers=2) as run:

        async def show(room: str) -> None:
            # At 10x, as the oracle test: the engine's grace (3 s) is 0.3 s of wall time.
            plan = showplan.plan_for(room_id=room, viewers=300, duration_s=30, speed=SPEED,
                                      seed=1, audience="regulars")
            sent = await sender.run(plan, gateway=run.gateway_url, tokens=run.tokens,
                                       progress=False)
            assert sent.rejected == 0, sent.errors
            deadline = time.monotonic() + 90
            while True:  # every event processed, and the end-of-show follow-ups out
                stats = await show_stats(run.redis, room)
                if (stats.get("events", 0) >= sent.accepted
                        and stats.get("followups", 0) >= stats.get("ev:viewer.joined", 0)):
                    break
                assert time.monotonic() < deadline, f"not settled: {stats}"
                await asyncio.sleep(0.5)

        # One evening, the same regulars in three stores' rooms at once (a viewer hops
        # between tabs): each room's state and clock must stay its own. At once rather
        # than one after the other: the test took 110 s, the suite's largest.
        await asyncio.gather(*(show(room) for room in rooms))
        workers = list(run.workers)
    # The system is stopped: a worker's graceful stop flushes its producer, so once every
    # worker exited by itself (not killed after the grace) all it sent is in Kafka.
    assert [w.returncode for w in workers] == [0] * len(workers), "a worker was killed"
    outputs = await read_all(settings, [topics.nudges, topics.tags, topics.followups])
    log = await read_all(settings, list(topics.inputs))
    nudges = [msgspec.json.decode(v, type=Nudge) for t, _, _, v in outputs if t == topics.nudges]
    tags = [msgspec.json.decode(v, type=TagChange) for t, _, _, v in outputs if t == topics.tags]
    follows = [msgspec.json.decode(v, type=FollowUp)
               for t, _, _, v in outputs if t == topics.followups]
    hosts, by_partition = inputs(log, topics)
    rules = load_dir(RULES)
    seen = []
    for room in rooms:
        mine = [e for p in by_partition.values() for e in p if e.room_id == room]
        room_hosts = [e for e in hosts if e.room_id == room]
        ended = room_of(room, room_hosts).ended_at
        assert ended is not None
        # The model sees this room's events only: no other room's clock in it.
        want = expect(rules, room_hosts, mine)
        got = ([n for n in nudges if n.room_id == room], [t for t in tags if t.room_id == room],
               [f for f in follows if f.room_id == room])
        assert differences(want, *got, until=ended) == [], room
        t0 = min(e.ts for e in room_hosts if isinstance(e, BroadcastStarted))
        # Relative to each show's start: the same show, whatever the evening's clock.
        seen.append(({(n.viewer_id, n.rule_id, n.sku, n.variant, n.ts - t0) for n in got[0]
                      if n.ts <= ended},
                     sorted((t.viewer_id, t.tag, t.value, t.op, t.ts - t0) for t in got[1])))
    assert seen[0][0] and seen[0][1]
    assert seen[0] == seen[1] == seen[2]
