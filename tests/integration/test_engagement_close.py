"""A worker that gives its partitions up (a revoke, a clean stop) saves the last second's
viewer state first, on the real stack: the tags `GET /v1/viewers/{viewer}/tags` answers
are what its records on Kafka add up to. Forgetting unsettled, as before, loses them
until another worker replays the partition (the control below shows the gap)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from stream.core.batch import Record
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import ViewerJoined
from stream.core.topics import Topics, partition_for
from stream.engine.rules import load_dir
from stream.store.currenttags import held_tags
from stream.store.ledger import Ledger
from stream.store.roomlog import RoomLog
from stream.worker.admin import ensure_topics
from stream.worker.engagement import Engagement
from stream.worker.pipeline import Pipeline

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.mark.parametrize("settle", [True, False], ids=["close", "forget-only"])
async def test_giving_partitions_up_saves_the_last_seconds_tags(
        settings: Settings, redis: Redis, settle: bool) -> None:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, topics, partitions=settings.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()

    async def send(topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> object:
        return await producer.send(topic, value, key=key, partition=partition)

    async def send_many(topic: str, partition: int,
                        records: Sequence[tuple[bytes | None, bytes]]) -> object:
        ack: object = None
        for key, value in records:
            ack = await producer.send(topic, value, key=key, partition=partition)
        return ack

    try:
        rules = load_dir(RULES)
        engagement = Engagement(redis=redis, rules=lambda: rules, rooms=RoomLog(redis),
                                send=send_many, topics=topics,
                                bootstrap=settings.kafka_bootstrap)
        pipeline = Pipeline(topics=topics, ledger=Ledger(redis), send=send,
                            handlers=[engagement])
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
        assert await held_tags(redis, first, partitions=settings.partitions) != []
        if settle:
            await engagement.close({p})
        else:
            engagement.forget({p})
        assert p not in engagement.engines
        held = await held_tags(redis, last, partitions=settings.partitions)
        if settle:
            assert (room, "source", "public") in held, held  # douyin is a public source
        else:  # the gap the settle closes: decided, sent, and not held
            assert held == []
    finally:
        await producer.stop()
