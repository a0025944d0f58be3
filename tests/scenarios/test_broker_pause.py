"""The broker paused for 10 s mid-show (SIGSTOP, then SIGCONT on the tansu process).

While Kafka cannot ack, the gateway answers 503 + Retry-After within a few seconds
instead of hanging or failing with a 500; the worker stalls and then resumes; and
afterwards nothing is lost or doubled: every accepted event is in Kafka once and
counted once, and no nudge, tag or follow-up went out twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from helpers import ev, read_all, read_effects, running_gateway, show_stats
from redis.asyncio import Redis
from test_faults import RULES, assert_orders_final, settled

from stream.core.codec import decode_events
from stream.core.config import Settings
from stream.core.topics import Topics
from stream.local import sender, showplan
from stream.local.embedded import EmbeddedStack
from stream.local.runner import spawn, stop_processes
from stream.store.inventory import Inventory

pytestmark = pytest.mark.integration

ROOM = "fault-room"  # test_faults' helpers read this room
PAUSE_S = 10
# A probe that waits longer than this for an answer counts as a hang.
PROBE_TIMEOUT_S = 30


@pytest.fixture
async def own_stack(tmp_path: Path) -> AsyncIterator[EmbeddedStack]:
    """A broker of this test's own: it is the one that gets paused."""
    stack = EmbeddedStack(log_dir=tmp_path / "stack")
    await stack.start()
    try:
        yield stack
    finally:
        assert stack.kafka is not None
        os.kill(stack.kafka.pid, signal.SIGCONT)  # never leave it stopped
        await stack.stop()


async def test_broker_paused_mid_show(own_stack: EmbeddedStack, tmp_path: Path) -> None:
    settings = Settings(kafka_url=own_stack.kafka_url, redis_url=own_stack.redis_url,
                        topic_prefix=f"p{uuid.uuid4().hex[:6]}.", partitions=4, rules_dir=RULES)
    topics = Topics(settings.topic_prefix)
    assert own_stack.kafka is not None
    tansu = own_stack.kafka.pid
    async with running_gateway(settings) as (_, url, tokens):
        worker = spawn(["worker"], settings, tmp_path / "worker.log")
        redis = Redis.from_url(settings.redis_url)
        plan = showplan.plan_for(room_id=ROOM, viewers=300, duration_s=25, speed=10, seed=7)
        probes: list[tuple[int, str | None, float]] = []
        refused: list[bytes] = []  # bodies answered 503: a client sends them again
        try:
            show = asyncio.create_task(sender.run(plan, gateway=url, tokens=tokens,
                                                  progress=False))
            await asyncio.sleep(8)
            os.kill(tansu, signal.SIGSTOP)
            paused = time.monotonic()
            headers = {"Authorization": f"Bearer {tokens.for_role('platform')}"}
            async with ClientSession(timeout=ClientTimeout(total=PROBE_TIMEOUT_S)) as http:
                while time.monotonic() - paused < PAUSE_S - 3:
                    body = orjson.dumps([ev("interaction.like", room_id=ROOM,
                                            viewer_id="probe", count=1)])
                    t = time.monotonic()
                    async with http.post(f"{url}/v1/events", data=body,
                                         headers=headers) as resp:
                        probes.append((resp.status, resp.headers.get("Retry-After"),
                                       time.monotonic() - t))
                        if resp.status == 503:
                            refused.append(body)
            await asyncio.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused)))
            os.kill(tansu, signal.SIGCONT)
            sent = await show
            assert sent.rejected == 0 and not sent.errors, sent.errors[:3]
            assert sent.retries > 0, "the gateway never refused during the pause?"
            # A 503 means "retry": the write may still land. Each probe's like is then
            # accepted by the retry or refused as a duplicate, and in Kafka once either way.
            async with ClientSession() as http:
                for body in refused:
                    while True:
                        async with http.post(f"{url}/v1/events", data=body,
                                             headers=headers) as resp:
                            if resp.status == 202:
                                answer = await resp.json()
                                break
                        await asyncio.sleep(1)
                    assert answer["accepted"] == 1 or "duplicate" in answer["rejected"][0][
                        "error"], answer
            accepted = sent.accepted + len(probes)
            await settled(redis, settings, topics, accepted=accepted)
            counted = (await show_stats(redis, ROOM)).get("events", 0)
            assert counted == accepted, f"{counted} events counted, {accepted} accepted"
            assert worker.poll() is None, "the worker died"
            audit = await Inventory(redis).audit(ROOM)
            assert audit.oversold == 0 and not audit.problems, audit
            await assert_orders_final(redis, settings, topics)
        finally:
            await stop_processes([worker])
            await redis.aclose()
    statuses = Counter(status for status, _, _ in probes)
    assert probes and set(statuses) <= {202, 503}, statuses
    assert statuses[503], f"no 503 while the broker was paused: {probes}"
    assert all(after for status, after, _ in probes if status == 503), probes

    inputs = await read_all(settings, list(topics.inputs))
    ids = Counter(e.event_id for _, _, _, v in inputs for _, e in decode_events(v).events)
    doubled = [i for i, n in ids.items() if n > 1]
    assert not doubled, f"{len(doubled)} events in Kafka twice, e.g. {doubled[:3]}"
    await read_effects(settings, topics)  # none of the three empty, none twice
