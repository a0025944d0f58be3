"""Partitions changing hands, on the real stack (the real Engagement, Pipeline, Redis and
Kafka; no group: the test plays the rebalance).

- A worker that gives its partitions up (a revoke, a clean stop) saves the last second's
  viewer state first: the tags `GET /v1/viewers/{viewer}/tags` answers are what its
  records on Kafka add up to. Forgetting unsettled, as before, loses them until another
  worker replays the partition (the control shows the gap).
- A worker that takes a partition with nothing left to re-read still fires its rooms'
  ends: the follow-ups of a show that ended during a rebalance (the control: without
  the adoption, none), and not while an input is still behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from helpers import Sends, viewer_path
from redis.asyncio import Redis

from stream.core.batch import Record
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import BroadcastEnded, BroadcastStarted, ViewerHeartbeat, ViewerJoined
from stream.core.topics import Topics, partition_for
from stream.store.currenttags import held_tags
from stream.store.roomlog import HostLog

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.mark.parametrize("settle", [True, False], ids=["close", "forget-only"])
async def test_giving_partitions_up_saves_the_last_seconds_tags(
        settings: Settings, redis: Redis, producer: AIOKafkaProducer, settle: bool) -> None:
    topics = Topics(settings.topic_prefix)
    engagement, pipeline = viewer_path(redis, settings, Sends(producer))
    room, now = f"room-{time.time_ns()}", int(time.time() * 1000)
    first, last = f"v1-{now}", f"v2-{now}"
    p = partition_for(first, settings.partitions)
    while partition_for(last, settings.partitions) != p:  # both on one partition
        last += "x"
    for offset, viewer in enumerate([first, last]):
        # The first batch settles at once (nothing settled yet); the second, well
        # inside the second that follows, leaves its state unsaved.
        joined = ViewerJoined(event_id=f"j-{viewer}", room_id=room, viewer_id=viewer,
                              ts=now + offset, source="douyin")
        await pipeline.process([Record(topics.viewer_events, p, offset, encode(joined))])
        await pipeline.drain()
    assert await held_tags(redis, first, partitions=settings.partitions,
                           deployment=settings.topic_prefix) != []
    if settle:
        await engagement.close({p})
    else:
        engagement.forget({p})
    assert p not in engagement.engines
    held = await held_tags(redis, last, partitions=settings.partitions,
                           deployment=settings.topic_prefix)
    if settle:
        assert (room, "source", "public") in held, held  # douyin is a public source
    else:  # the gap the settle closes: decided, sent, and not held
        assert held == []


@pytest.mark.parametrize(("adopt", "behind"), [(True, False), (False, False), (True, True)],
                         ids=["adopted", "control-not-adopted", "adopted-orders-behind"])
async def test_a_partition_taken_with_nothing_to_reread_still_ends_its_show(
        settings: Settings, redis: Redis, producer: AIOKafkaProducer, adopt: bool,
        behind: bool) -> None:
    topics = Topics(settings.topic_prefix)
    room, now = f"room-{time.time_ns()}", int(time.time() * 1000)
    viewer = f"v-{now}"
    p = partition_for(viewer, settings.partitions)
    # The show ends a second after the viewer joined; the old owner never hears of the
    # end (logged after it let go), and the viewer's last event, 5 s later, is past the
    # end and its 3 s grace: the new owner's clock starts beyond the end.
    await HostLog(redis).append([
        BroadcastStarted(event_id=f"s-{room}", room_id=room, ts=now - 1000)])
    old = Sends(producer)
    owner, pipeline = viewer_path(redis, settings, old)
    joined = ViewerJoined(event_id=f"j-{viewer}", room_id=room, viewer_id=viewer,
                          ts=now, source="douyin")
    beat = ViewerHeartbeat(event_id=f"h-{viewer}", room_id=room, viewer_id=viewer,
                           ts=now + 5000)
    await pipeline.process([Record(topics.viewer_events, p, 0, encode(joined)),
                            Record(topics.viewer_events, p, 1, encode(beat))])
    await pipeline.drain()
    await owner.close({p})  # the revoke: saved up to the partition's end
    assert topics.followups not in old.topics
    await HostLog(redis).append([
        BroadcastEnded(event_id=f"e-{room}", room_id=room, ts=now + 1000)])
    wall = [time.time()]
    new = Sends(producer)
    taker, _ = viewer_path(
        redis, settings, new, clock=lambda: wall[0],
        behind=lambda topic, _: behind and topic == topics.order_events)
    if adopt:
        await taker.adopt({p})
    wall[0] += 5.0  # past the end and its grace, and no record comes
    await taker.tick()
    await taker.close()
    if adopt and not behind:
        assert new.topics.count(topics.followups) == 1, new.topics
    else:  # not loaded; or loaded, with the order topic still to read: it waits for
        # it, though its states' own clock is past the end
        assert topics.followups not in new.topics, new.topics
