"""Each show on its own books: the same show run under three room ids on one system, by
the same viewers, fires the same nudges and tags in each room, equal to the offline
engine run on that room's events alone."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import msgspec
import pytest
from helpers import read_all
from test_oracle import RULES, SPEED, final_tags, oracle

from stream.core.codec import decode_events
from stream.core.config import Settings
from stream.core.models import HostEvent, Nudge, TagChange, ViewerEvent
from stream.core.topics import Topics
from stream.engine.timeline import RoomTimeline, fold
from stream.local import simulator
from stream.local.runner import running
from stream.store.ledger import read_stats

pytestmark = pytest.mark.integration


def room_inputs(log: list[tuple[str, int, int, bytes]], topics: Topics, room_id: str,
                ) -> tuple[RoomTimeline, dict[int, list[ViewerEvent]]]:
    """One room's timeline and each partition's viewer events of that room, in event-time
    order (as the oracle test orders them)."""
    hosts: list[HostEvent] = []
    by_partition: dict[int, list[tuple[int, int, ViewerEvent]]] = defaultdict(list)
    for topic, partition, offset, value in sorted(log, key=lambda r: (r[0], r[1], r[2])):
        for index, event in decode_events(value).events:
            if event.room_id != room_id:
                continue
            if isinstance(event, HostEvent):
                hosts.append(event)
            elif isinstance(event, ViewerEvent):
                rank = 0 if topic == topics.viewer_events else 1
                by_partition[partition].append((event.ts, rank * 10**9 + offset * 1000 + index,
                                                event))
    room = fold(RoomTimeline(room_id=room_id), sorted(hosts, key=lambda e: e.ts))
    return room, {p: [e for _, _, e in sorted(items, key=lambda x: (x[0], x[1]))]
                  for p, items in by_partition.items()}


async def test_the_same_show_in_three_rooms_fires_the_same_in_each(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, rules_dir=RULES)
    topics = Topics(settings.topic_prefix)
    rooms = [f"store-{i}-{int(time.time())}" for i in range(3)]
    async with running(settings, workers=2) as run:
        for room in rooms:  # one evening: the same regulars hop from room to room
            # At 10x, as the oracle test: the engine's grace (3 s) is 0.3 s of wall time.
            plan = simulator.plan_for(room_id=room, viewers=300, duration_s=30, speed=SPEED,
                                      seed=1, audience="regulars")
            sent = await simulator.run(plan, gateway=run.gateway_url, tokens=run.tokens,
                                       progress=False)
            assert sent.rejected == 0, sent.errors
            deadline = time.monotonic() + 90
            while True:  # every event processed, and the end-of-show follow-ups out
                stats = await read_stats(run.redis, room)
                if (stats.get("events", 0) >= sent.accepted
                        and stats.get("followups", 0) >= stats.get("ev:viewer.joined", 0)):
                    break
                assert time.monotonic() < deadline, f"not settled: {stats}"
                await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # the last acks
        outputs = await read_all(run.settings, [topics.nudges, topics.tags])
        inputs = await read_all(run.settings, list(topics.inputs))
    nudges = [msgspec.json.decode(v, type=Nudge) for t, _, _, v in outputs if t == topics.nudges]
    tags = [msgspec.json.decode(v, type=TagChange) for t, _, _, v in outputs if t == topics.tags]
    seen = []
    for room in rooms:
        timeline, by_partition = room_inputs(inputs, topics, room)
        assert timeline.ended_at is not None
        want, want_tags = oracle(timeline, by_partition)
        t0 = timeline.started_at or 0
        # Relative to each show's start: the same show, whatever the evening's clock.
        got = {(n.viewer_id, n.rule_id, n.sku, n.variant, n.ts - t0) for n in nudges
               if n.room_id == room and n.ts <= timeline.ended_at}
        assert got == {(*n[:4], n[4] - t0) for n in want if n[4] <= timeline.ended_at}, room
        held = final_tags([t for t in tags if t.room_id == room])
        assert held == want_tags, room
        seen.append((got, held))
    assert seen[0][0] and seen[0][1]
    assert seen[0] == seen[1] == seen[2]
