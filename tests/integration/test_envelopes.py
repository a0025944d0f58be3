"""The gateway's envelopes on a real broker: at most 500 events, or 256 KiB (crossed only
by the event that filled it), per record; every event once, in order; every caller's
future resolved once its record is acked."""

from __future__ import annotations

import asyncio

import pytest
from helpers import read_all

from stream.core.codec import decode_events, encode
from stream.core.config import Settings
from stream.core.models import Comment, ViewerHeartbeat
from stream.core.topics import Topics
from stream.gateway.producer import EnvelopeProducer
from stream.worker.admin import ensure_topics

pytestmark = pytest.mark.integration

MAX_EVENTS, MAX_BYTES = 500, 256 * 1024


async def test_envelopes_split_at_500_events_and_256_kib(settings: Settings) -> None:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, topics, partitions=settings.partitions)
    small = [encode(ViewerHeartbeat(event_id=f"h{i}", room_id="r", viewer_id="v",
                                    ts=1_780_000_000_000 + i)) for i in range(1234)]
    # 500 characters of 3 bytes: ~1.6 KB an event, so 256 KiB comes before 500 events.
    big = [encode(Comment(event_id=f"c{i}", room_id="r", viewer_id="v", text="米" * 500,
                          ts=1_780_000_100_000 + i)) for i in range(400)]
    producer = EnvelopeProducer(bootstrap=settings.kafka_bootstrap)
    await producer.start()
    try:
        # Added without a pause, so only the limits (not the 5 ms linger) cut records.
        waiters = [producer.add(topics.viewer_events, 0, data) for data in small + big]
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=30)
    finally:
        await producer.stop()
    records = sorted(await read_all(settings, [topics.viewer_events]), key=lambda r: r[2])
    sizes = [[len(encode(e)) + 1 for _, e in decode_events(v).events] for *_, v in records]
    ids = [e.event_id for *_, v in records for _, e in decode_events(v).events]
    assert ids == [f"h{i}" for i in range(1234)] + [f"c{i}" for i in range(400)]
    assert [len(s) for s in sizes[:2]] == [500, 500]  # the small ones: cut by count
    assert all(len(s) <= MAX_EVENTS for s in sizes)
    assert all(sum(s[:-1]) < MAX_BYTES for s in sizes)  # only the last event crosses
    # Every record but the last is full: 500 events or 256 KiB; the big ones by size.
    assert all(len(s) == MAX_EVENTS or sum(s) >= MAX_BYTES for s in sizes[:-1])
    assert sum(1 for s in sizes[2:-1] if len(s) < MAX_EVENTS and sum(s) >= MAX_BYTES) >= 2


async def test_envelopes_of_one_partition_reach_kafka_in_the_order_shipped(
        settings: Settings) -> None:
    # Each envelope is past the client's 16 KiB batch, so every send finds the partition's
    # batch full and waits for it to drain, while new envelopes keep being shipped between
    # the waits: the case where aiokafka's own send lets a later caller go first.
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, topics, partitions=settings.partitions)
    # 20 comments of ~1.6 KB an envelope: ~32 KB a record.
    producer = EnvelopeProducer(bootstrap=settings.kafka_bootstrap, max_events=20)
    await producer.start()
    n = 2400
    try:
        waiters = []
        for i in range(n):
            waiters.append(producer.add(topics.viewer_events, 3, encode(Comment(
                event_id=f"order-{i}", room_id="r-order", viewer_id="v", text="米" * 500,
                ts=1_780_000_200_000 + i))))
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=60)
    finally:
        await producer.stop()
    records = sorted(await read_all(settings, [topics.viewer_events]), key=lambda r: r[2])
    ids = [e.event_id for _, p, _, v in records if p == 3
           for _, e in decode_events(v).events if e.event_id.startswith("order-")]
    assert ids == [f"order-{i}" for i in range(n)]
