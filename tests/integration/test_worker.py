"""The worker on the real stack: start-up time, garbage on a topic, once-only counting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from helpers import ev
from redis.asyncio import Redis

from stream.core.config import Settings, to_env
from stream.core.models import DeadLetter
from stream.core.topics import Topics, partition_for
from stream.store.ledger import Ledger, RoomBatch, read_stats
from stream.worker.admin import ensure_topics

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"


async def wait_for(predicate, *, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_ledger_counts_each_record_once(redis: Redis) -> None:
    ledger = Ledger(redis)
    room = f"ledger-{time.time_ns()}"

    def batch(offsets: range) -> RoomBatch:
        b = RoomBatch(room, "topic", 0)
        for o in offsets:
            b.add(o, "events")
        return b

    assert await ledger.apply([batch(range(0, 10))]) == 0
    assert await ledger.apply([batch(range(0, 10))]) == 10       # full redelivery
    assert await ledger.apply([batch(range(5, 15))]) == 5        # overlapping redelivery
    assert (await read_stats(redis, room))["events"] == 15


async def test_worker_processes_and_survives_garbage(settings: Settings, redis: Redis,
                                                     tmp_path: Path) -> None:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, topics, partitions=settings.partitions)
    room = f"room-{time.time_ns()}"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    log = (tmp_path / "worker.log").open("wb")
    # In a directory of its own, to see that it leaves nothing there (faust's data dir).
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    rules = msgspec.structs.replace(settings, rules_dir=RULES)
    worker = subprocess.Popen([sys.executable, "-m", "stream", "worker"],
                              env={**os.environ, **to_env(rules)}, cwd=workdir,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        first = orjson.dumps(ev("viewer.joined", room_id=room, source="douyin"))
        await producer.send_and_wait(topics.viewer_events, first, key=b"v1",
                                     partition=partition_for("v1", settings.partitions))

        async def counted(n: int):  # type: ignore[no-untyped-def]
            async def check() -> bool:
                return (await read_stats(redis, room)).get("events", 0) >= n
            return check

        # How fast a worker starts (~3 s) is bench/claims.py's to measure; here it starts.
        await wait_for(await counted(1), timeout=60)
        assert list(workdir.iterdir()) == [], "the worker wrote to its working directory"

        # Garbage written by another Kafka client, then good events behind it.
        garbage = [
            b"\x00\xffnot json at all",
            b'{"type": "viewer.joined"}',
            orjson.dumps([ev("viewer.heartbeat", room_id=room), {"type": "nope"}]),
            orjson.dumps(ev("order.paid", room_id=room)),  # an order event on the viewer topic
        ]
        sent = []
        for value in garbage:
            meta = await producer.send_and_wait(topics.viewer_events, value, partition=0)
            sent.append(meta.offset)
        for i in range(20):
            await producer.send_and_wait(
                topics.viewer_events, orjson.dumps(ev("interaction.like", room_id=room)),
                partition=i % settings.partitions)

        await wait_for(await counted(1 + 1 + 20), timeout=20)
        assert worker.poll() is None, "worker died on garbage"

        consumer = AIOKafkaConsumer(topics.dead_letters, bootstrap_servers=settings.kafka_bootstrap,
                                    auto_offset_reset="earliest")
        await consumer.start()
        letters: list[DeadLetter] = []
        try:
            for _ in range(50):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    letters += [msgspec.json.decode(r.value, type=DeadLetter) for r in records]
                if len(letters) >= 4:
                    break
        finally:
            await consumer.stop()
        assert len(letters) == 4
        assert {(d.origin.topic, d.origin.partition) for d in letters} == {
            (topics.viewer_events, 0)}
        assert sorted({d.origin.offset for d in letters}) == sent
        errors = " | ".join(d.error for d in letters)
        assert "not valid JSON" in errors and "$.type" in errors
        assert "belongs on" in errors and "event_id" in errors
        stats = await read_stats(redis, room)
        assert stats["dead_letters"] == 1  # only the misrouted order names its room
    finally:
        await producer.stop()
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
