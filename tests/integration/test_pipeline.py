"""The pipeline's failure paths on a real Redis: a handler's bug parks its batch as dead
letters and the worker goes on; an outage is waited out. (A write behind the batch
fails the same way: tests/integration/test_presence.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from stream.core import counters
from stream.core.batch import Part, Record
from stream.core.codec import encode
from stream.core.models import Like
from stream.core.topics import Topics
from stream.store.ledger import Ledger, read_stats
from stream.worker.pipeline import Pipeline

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000


class Flaky:
    """A handler that fails its first `transient` tries with an outage, then raises `bug`
    if given, and otherwise counts what it saw."""

    def __init__(self, *, transient: int = 0, bug: Exception | None = None) -> None:
        self.transient, self.bug, self.tries, self.seen = transient, bug, 0, 0

    async def handle(self, parts: Sequence[Part]) -> None:
        self.tries += 1
        if self.tries <= self.transient:
            raise ConnectionError("valkey went away")
        if self.bug is not None:
            raise self.bug
        self.seen += sum(len(part.events) for part in parts)


async def run(redis: Redis, handlers: list[Flaky], *, n: int = 3,
              ) -> tuple[str, list[dict[str, object]], Topics]:
    room = f"pl-{uuid.uuid4().hex[:8]}"
    topics = Topics(f"{room}.")
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> None:
        sent.append((topic, value))

    pipeline = Pipeline(topics=topics, ledger=Ledger(redis), send=send, handlers=handlers,
                        count=counters.count, retry_delays=(0.01,))
    await pipeline.process([
        Record(topics.viewer_events, 0, i, encode(Like(event_id=f"{room}-{i}", room_id=room,
                                                        viewer_id=f"v{i}", ts=T0 + i, count=1)))
        for i in range(n)])
    await pipeline.drain()
    letters = [msgspec.json.decode(v) for t, v in sent if t == topics.dead_letters]
    return room, letters, topics


async def test_a_handlers_bug_dead_letters_the_batch_and_names_it(redis: Redis) -> None:
    ok, buggy = Flaky(), Flaky(bug=KeyError("sku"))
    room, letters, topics = await run(redis, [ok, buggy])
    assert len(letters) == 3
    assert all("Flaky: KeyError('sku')" in letter["error"] for letter in letters)
    assert {letter["origin"]["offset"] for letter in letters} == {0, 1, 2}
    stats = await read_stats(redis, room)
    assert stats["dead_letters"] == 3 and "events" not in stats
    # Parked, not lost: the consumed mark moves past them (a replay is the dead letters').
    assert (await Ledger(redis).consumed())[f"{topics.viewer_events}:0"] == 2


async def test_an_outage_in_a_handler_is_waited_out(redis: Redis) -> None:
    flaky = Flaky(transient=2)
    room, letters, _ = await run(redis, [flaky])
    assert letters == [] and flaky.tries == 3 and flaky.seen == 3
    assert (await read_stats(redis, room))["events"] == 3
