"""A partition taken over after a kill -9 starts where its viewer state is up to, on the
real stack: records the pipeline consumed but that still waited in the Reorder (a
partition's first orders, held while the views catch up) are read again by the next
owner. The fault show lost 1-4 viewers' orders this way (stream/worker/resume.py, start_of)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP
from helpers import Sends, viewer_path
from redis.asyncio import Redis

from stream.core.batch import Record
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import OrderItem, OrderPlaced, ViewerHeartbeat
from stream.core.topics import Topics
from stream.store.ledger import Ledger
from stream.worker.app import create_app

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"


async def test_orders_waiting_at_a_kill_are_read_again_by_the_next_owner(
        settings: Settings, redis: Redis, producer: AIOKafkaProducer) -> None:
    topics = Topics(settings.topic_prefix)
    # The dying owner: its views are behind (more are on their way), so an order a
    # minute of show ahead of them waits in the Reorder.
    engagement, pipeline = viewer_path(
        redis, settings, Sends(producer),
        behind=lambda topic, _: topic == topics.viewer_events)
    ledger = Ledger(redis)
    p, room, now = 1, f"room-{time.time_ns()}", int(time.time() * 1000)
    view = ViewerHeartbeat(event_id=f"h{now}", room_id=room, viewer_id="v1", ts=now)
    order = OrderPlaced(event_id=f"o{now}", room_id=room, viewer_id="v1", order_id="o1",
                        items=[OrderItem("sku-1", 1, 100)], ts=now + 60_000)
    await pipeline.process([Record(topics.viewer_events, p, 0, encode(view)),
                            Record(topics.order_events, p, 0, encode(order))])
    await pipeline.drain()
    await engagement.tick()  # settles: the view's fence is saved, the order waits
    fences = await engagement.saved_fences([p])
    assert fences[p].get(topics.viewer_events) == 0
    assert topics.order_events not in fences[p], "the waiting order was fenced off"
    assert (await ledger.consumed())[f"{topics.order_events}:{p}"] == 0
    # Killed here. The next owner's start, with faust's commit past both records.
    app = create_app(settings)
    resume = app.resume_offsets  # type: ignore[attr-defined]
    starts = await resume({TP(topics.viewer_events, p): 1, TP(topics.order_events, p): 1})
    assert starts == {TP(topics.viewer_events, p): 1, TP(topics.order_events, p): 0}
