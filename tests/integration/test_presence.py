"""The host's counters on a real Redis under Kafka's redelivery: counted once per record."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from stream.core import counters
from stream.core.batch import Record
from stream.core.codec import encode
from stream.core.counters import minute_of
from stream.core.models import Event, Like, ViewerJoined, ViewerLeft
from stream.core.topics import Topics
from stream.hostview.reader import RoomReader
from stream.store import keys
from stream.store.ledger import Ledger, read_stats
from stream.store.presence import Presence
from stream.worker.pipeline import Pipeline

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
TOPICS = Topics("rs.")


async def _send(topic: str, value: bytes, key: bytes | None = None,
                partition: int | None = None) -> None:
    return None


def pipeline(redis: Redis) -> Pipeline:
    return Pipeline(topics=TOPICS, ledger=Ledger(redis), send=_send, handlers=[Presence(redis)],
                    count=counters.count)


def records(events: list[Event], *, partition: int = 0, first: int = 0) -> list[Record]:
    return [Record(TOPICS.viewer_events, partition, first + i, encode(e))
            for i, e in enumerate(events)]


async def test_presence_and_counters_survive_redelivery(redis: Redis) -> None:
    room = f"rs-{uuid.uuid4().hex[:8]}"

    def ev(cls: type[Event], viewer: str, ts: int, **kw: object) -> Event:
        return cls(event_id=f"{viewer}-{ts}", room_id=room, viewer_id=viewer, ts=ts, **kw)

    show = [
        ev(ViewerJoined, "a", T0, source="douyin", returning=True),
        ev(ViewerJoined, "b", T0 + 1_000, source="wecom_group", region="成都"),
        ev(Like, "a", T0 + 2_000, count=5),
        ev(ViewerLeft, "a", T0 + 61_000),
        ev(ViewerJoined, "a", T0 + 70_000, source="douyin"),  # back again: a second visit
        ev(ViewerLeft, "b", T0 + 121_000),
    ]
    recs = records(show)
    p = pipeline(redis)
    await p.process(recs[:4])
    await p.drain()
    await p.process(recs[2:])  # a rebalance redelivers from offset 2
    await p.drain()
    await p.process(recs)  # and a restart from the beginning
    await p.drain()
    once = await read_stats(redis, room)
    assert once["events"] == 6 and once["likes"] == 5
    assert once[f"m:{minute_of(T0)}:joins"] == 2
    assert once[f"m:{minute_of(T0 + 70_000)}:joins"] == 1
    assert (once["online"], once["peak"], once["viewers"]) == (1, 2, 2)
    assert once["watch_ms"] == 61_000 + 120_000
    assert once["open_join_sum"] == T0 + 70_000  # only a's second visit is open
    assert (once["src:douyin:viewers"], once["src:wecom_group:viewers"]) == (1, 1)
    assert (once["layer:returning:viewers"], once["layer:unknown:viewers"]) == (1, 1)

    # Another partition's viewer joins while these records come round yet again.
    late = records([ev(ViewerJoined, "c", T0 + 130_000, source="douyin")], partition=1)
    await p.process(recs[3:] + late)
    await p.drain()
    again = await read_stats(redis, room)
    m2 = f"m:{minute_of(T0 + 130_000)}"
    changed = {k for k in again.keys() | once.keys() if again.get(k) != once.get(k)}
    assert changed == {"events", "ev:viewer.joined", f"{m2}:joins", f"{m2}:online", "online",
                       "viewers", "src:douyin:viewers", "layer:unknown:viewers",
                       "open_join_sum"}  # c's join, and nothing of the replay
    assert (again["online"], again["peak"], again["viewers"], again["events"]) == (2, 2, 3, 7)

    viewers = {v.viewer_id: v for v in await RoomReader(redis).viewers(
        room, end_ms=T0 + 190_000)}
    assert viewers["a"].watched_ms == 61_000 + 120_000  # closed 61 s + open 120 s to the end
    assert viewers["b"].watched_ms == 120_000 and viewers["b"].region == "成都"
    assert viewers["c"].layer == "unknown" and not viewers["c"].carted
    assert await redis.zscore(keys.METRIC_ROOMS, room) == T0 + 130_000
