"""A takeover's look for a dead worker's sends (stream/worker/sentcheck.py), on the real
tansu: the once-ids of what reached each output partition from a time on, no more.

A time past every record is not checked: tansu 0.6 answers it with the first offset
(Kafka says none), so the look reads more than it must, which is safe: an id found is
an effect that was sent."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.core.config import Settings
from stream.core.models import Nudge, TagChange
from stream.core.topics import Topics
from stream.store.claims import once_id
from stream.worker.sentcheck import once_ids_in

pytestmark = pytest.mark.integration

def _nudge(viewer: str, ts: int) -> Nudge:
    return Nudge(viewer_id=viewer, room_id="r", rule_id="dwell", sku="rice", message="m",
                 variant="treatment", channel="live_popup", ts=ts)


def _tag(viewer: str, ts: int) -> TagChange:
    return TagChange(viewer_id=viewer, room_id="r", tag="intent", value="high", op="add",
                     ts=ts)


async def test_the_once_ids_sent_since_a_time(settings: Settings) -> None:
    bootstrap = settings.kafka_bootstrap
    topics = Topics(f"sent-{uuid.uuid4().hex[:8]}.")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics.nudges, 2, 1), NewTopic(topics.tags, 1, 1)])
    finally:
        await admin.close()
    # The broker indexes times as it appends (tansu 0.6 takes no producer timestamp for
    # that), so the look's start is a moment between two rounds of sends.
    before = [(topics.nudges, 0, _nudge("v1", 1)), (topics.nudges, 1, _nudge("v4", 4))]
    after = [(topics.nudges, 0, _nudge("v2", 2)), (topics.nudges, 0, _nudge("v3", 3)),
             (topics.nudges, 1, _nudge("v5", 5)), (topics.tags, 0, _tag("v6", 6)),
             (topics.tags, 0, _tag("v7", 7))]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, partition, effect in before:
            await producer.send_and_wait(topic, msgspec.json.encode(effect), partition=partition)
        await asyncio.sleep(0.2)
        since_ms = int(time.time() * 1000)
        await asyncio.sleep(0.2)
        for topic, partition, effect in after:
            await producer.send_and_wait(topic, msgspec.json.encode(effect), partition=partition)
    finally:
        await producer.stop()
    since = {(topics.nudges, 0): since_ms, (topics.nudges, 1): since_ms,
             (topics.tags, 0): since_ms}

    found = await once_ids_in(since, bootstrap=bootstrap, topics=topics)

    assert found == {once_id(e) for _, _, e in after}
