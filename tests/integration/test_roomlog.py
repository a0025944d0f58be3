"""The room log on the real valkey: host events appended once, folded in by every reader."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis

from stream.core.models import BroadcastEnded, BroadcastStarted, HostEvent, SegmentStarted
from stream.engine.timeline import RoomTimeline
from stream.store.roomlog import HostLog, RoomLog

pytestmark = pytest.mark.integration


def show(room: str, t0: int) -> list[HostEvent]:
    return [BroadcastStarted(event_id=f"{room}-s", room_id=room, ts=t0),
            SegmentStarted(event_id=f"{room}-a", room_id=room, ts=t0 + 1, segment="intro"),
            SegmentStarted(event_id=f"{room}-b", room_id=room, ts=t0 + 2, segment="demo"),
            BroadcastEnded(event_id=f"{room}-e", room_id=room, ts=t0 + 3)]


async def test_appends_once_and_concurrent_refreshes_fold_each_entry_once(redis: Redis) -> None:
    room, t0 = f"log-{uuid.uuid4().hex[:8]}", int(time.time() * 1000)
    events = show(room, t0)
    log, reader = HostLog(redis), RoomLog(redis)
    await log.append(events[:2])
    await log.append(events[:2])  # a redelivery: nothing appended twice
    await reader.refresh([room])
    await log.append(events[2:])
    # The host agent and the viewer path share a reader and refresh at the same time.
    await asyncio.gather(*(reader.refresh([room]) for _ in range(3)))
    timeline = reader.get(room)
    assert [s[1] for s in timeline.segments] == ["intro", "demo"]
    assert (timeline.started_at, timeline.ended_at) == (t0, t0 + 3)
    await asyncio.gather(reader.refresh([room]), reader.refresh([room]))
    assert reader.get(room).segments == timeline.segments


async def test_a_room_live_again_is_folded_as_the_engine_folds_it(redis: Redis) -> None:
    # The room log once folded by its own rules (latest start, latest end): a room live
    # again the next day then looked ended, with yesterday's segments on air.
    room, t0 = f"log-{uuid.uuid4().hex[:8]}", int(time.time() * 1000)
    day = 86_400_000
    again = [BroadcastStarted(event_id=f"{room}-s2", room_id=room, ts=t0 + day),
             SegmentStarted(event_id=f"{room}-c", room_id=room, ts=t0 + day + 1, segment="qa")]
    events = [*show(room, t0), *again]
    await HostLog(redis).append(events)
    reader = RoomLog(redis)
    await reader.refresh([room])
    timeline = reader.get(room)
    assert (timeline.started_at, timeline.ended_at) == (t0 + day, None)
    assert [s[1] for s in timeline.segments] == ["qa"]
    by_hand = RoomTimeline(room_id=room)
    for event in events:
        by_hand.observe(event)
    assert timeline == by_hand
