"""The host's counters on a real Redis under Kafka's redelivery: counted once per record."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from stream.core import counters
from stream.core.batch import Part, Record, Send, Write
from stream.core.codec import encode
from stream.core.counters import minute_of
from stream.core.models import (
    Event,
    Like,
    ProductViewed,
    ViewerHeartbeat,
    ViewerJoined,
    ViewerLeft,
)
from stream.core.topics import Topics
from stream.hostview import metrics
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


def pipeline(redis: Redis, *, timeout_ms: int = 60_000, presence: Presence | None = None,
             send: Send = _send, topics: Topics = TOPICS) -> Pipeline:
    """Presence behind the batch, as the worker runs it (stream/worker/app.py)."""
    return Pipeline(topics=topics, ledger=Ledger(redis), send=send,
                    behind=[presence or Presence(redis, timeout_ms=timeout_ms)],
                    count=counters.count, retry_delays=(0.01,))


DAY = 86_400_000


def records(events: list[Event], *, partition: int = 0, first: int = 0,
            topics: Topics = TOPICS) -> list[Record]:
    return [Record(topics.viewer_events, partition, first + i, encode(e))
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
    p = pipeline(redis, timeout_ms=DAY)  # no heartbeats here: no one times out
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
    assert changed == {"events", "ev:viewer.joined", f"{m2}:joins", f"{m2}:online_d", "online",
                       "viewers", "src:douyin:viewers", "layer:unknown:viewers",
                       "open_join_sum", "presence_clock:1"}  # c's join, nothing of the replay
    assert (again["online"], again["peak"], again["viewers"], again["events"]) == (2, 2, 3, 7)

    viewers = {v.viewer_id: v for v in await RoomReader(redis, presence_timeout_ms=DAY).viewers(
        room, end_ms=T0 + 190_000)}
    assert viewers["a"].watched_ms == 61_000 + 120_000  # closed 61 s + open 120 s to the end
    assert viewers["b"].watched_ms == 120_000 and viewers["b"].region == "成都"
    assert viewers["c"].layer == "unknown" and not viewers["c"].carted
    assert await redis.zscore(keys.METRIC_ROOMS, room) == T0 + 130_000


# --- the presence timeout ----------------------------------------------------------------

TIMEOUT = 60_000


def online_by_minute(events: list[Event], *, timeout: int = TIMEOUT,
                     ) -> tuple[dict[int, int], dict[str, int], int]:
    """The rule straight from the log, knowing nothing of Redis: visits (a join opens one,
    a leave or a gap of `timeout` since the viewer's last app event ends it, at that last
    event; any app event after opens a new one), as opened-minus-ended per minute, each
    viewer's watch time, and the visits open at the end."""
    last: dict[str, int] = {}  # open visits: viewer -> last event
    start: dict[str, int] = {}
    delta: Counter[int] = Counter()
    watched: Counter[str] = Counter()
    joined: set[str] = set()
    for e in sorted(events, key=lambda e: e.ts):
        v = e.viewer_id  # type: ignore[attr-defined]
        if v in last and e.ts - last[v] >= timeout:  # timed out at its last event
            watched[v] += last[v] - start.pop(v)
            delta[minute_of(last.pop(v))] -= 1
        if isinstance(e, ViewerJoined):
            joined.add(v)
        if v not in joined:
            continue
        if isinstance(e, ViewerLeft):
            if v in last:
                watched[v] += e.ts - start.pop(v)
                last.pop(v)
                delta[minute_of(e.ts)] -= 1
        elif v in last:
            last[v] = e.ts
        else:
            last[v], start[v] = e.ts, e.ts
            delta[minute_of(e.ts)] += 1
    end = max(e.ts for e in events)
    for v, ts in list(last.items()):  # the end of the log is a clock too
        if end - ts >= timeout:
            watched[v] += ts - start.pop(v)
            delta[minute_of(last.pop(v))] -= 1
    return dict(delta), dict(watched), len(last)


def ghost_show(room: str) -> list[Event]:
    """20 viewers; 10 keep a heartbeat every 30 s for 10 minutes, 10 go silent after a
    view, as a killed app does; 3 of those come back 5 minutes later, and one of the
    heartbeat ones skips two beats (a 90 s gap: a new visit)."""
    out: list[Event] = []

    def add(cls: type[Event], viewer: str, ts: int, **kw: object) -> None:
        out.append(cls(event_id=f"{viewer}-{len(out)}", room_id=room, viewer_id=viewer, ts=ts,
                       **kw))

    for i in range(20):
        v, t = f"v{i:02d}", T0 + i * 1_000
        add(ViewerJoined, v, t, source="douyin")
        add(ProductViewed, v, t + 5_000, sku="rice")
        if i < 10:
            for k in range(1, 21):
                if not (i == 0 and k in (5, 6)):
                    add(ViewerHeartbeat, v, t + k * 30_000)
        elif i < 13:
            add(Like, v, t + 300_000, count=1)
            add(ViewerHeartbeat, v, t + 330_000)
    return out


async def test_silent_viewers_drop_out_after_the_timeout_on_event_time(redis: Redis) -> None:
    room = f"gh-{uuid.uuid4().hex[:8]}"
    events = ghost_show(room)
    p = pipeline(redis)
    await p.process(records(sorted(events, key=lambda e: e.ts)))
    await p.drain()
    stats = await read_stats(redis, room)
    delta, watched, open_at_end = online_by_minute(events)
    # Of 20, the 10 with heartbeats are online at the end; the 10 silent ones left at
    # their view 5 s after joining, and the 3 who came back timed out again by the end.
    assert open_at_end == 10 and stats["online"] == 10 and stats["viewers"] == 20
    assert {k: int(v) for k, v in stats.items() if k.endswith(":online_d") and v} == {
        f"m:{m}:online_d": d for m, d in delta.items() if d}
    assert stats["watch_ms"] == sum(watched.values())  # the closed visits
    reader = RoomReader(redis)
    got = {v.viewer_id: v.watched_ms for v in await reader.viewers(room, end_ms=T0 + 700_000)}
    assert got["v10"] == 5_000 + 30_000  # 5 s, then 30 s on its return
    assert got["v15"] == 5_000  # silent after its view: watch time ends there
    series = metrics.compute(await reader.raw(room, wall_now_ms=T0 + 700_000)).series
    assert [pt.online for pt in series][-1] == 10


async def test_a_replay_at_100x_gives_the_same_online_series(redis: Redis) -> None:
    """The same log through the script live (batches of a few events, in time order) and
    as a fast replay: whole partitions at once, one a full show behind the other (each
    partition's visits close on its own clock), redelivered twice."""
    events = ghost_show("x")

    def in_room(room: str) -> list[Event]:
        return [msgspec.structs.replace(e, room_id=room) for e in events]

    live, fast = f"lv-{uuid.uuid4().hex[:6]}", f"fa-{uuid.uuid4().hex[:6]}"
    p = pipeline(redis)
    ordered = sorted(in_room(live), key=lambda e: e.ts)
    parts = {0: [e for e in ordered if int(e.viewer_id[1:]) % 2 == 0],
             1: [e for e in ordered if int(e.viewer_id[1:]) % 2 == 1]}
    offsets = {e.event_id: i for part in parts.values() for i, e in enumerate(part)}
    for e in ordered:
        part = int(e.viewer_id[1:]) % 2
        await p.process([Record(TOPICS.viewer_events, part, offsets[e.event_id], encode(e))])
    await p.drain()
    ordered = sorted(in_room(fast), key=lambda e: e.ts)
    even = [e for e in ordered if int(e.viewer_id[1:]) % 2 == 0]
    odd = [e for e in ordered if int(e.viewer_id[1:]) % 2 == 1]
    evens = records(even)
    # The odd partition first, a whole show ahead, then the even one in chunks; then
    # redeliveries of both.
    for batch in (records(odd, partition=1), *(evens[i:i + 40] for i in range(0, len(evens), 40)),
                  evens[:30], records(odd, partition=1)):
        await p.process(batch)
        await p.drain()
    a, b = await read_stats(redis, live), await read_stats(redis, fast)
    reader = RoomReader(redis)
    series = [[pt.online for pt in metrics.compute(
        await reader.raw(room, wall_now_ms=T0 + 700_000)).series] for room in (live, fast)]
    delta, _, _ = online_by_minute(events)
    first = minute_of(T0)
    want = [sum(d for m, d in delta.items() if m <= first + k) for k in range(len(series[0]))]
    assert series[0] == series[1] == want
    for key in ("online", "watch_ms", "viewers", "open_join_sum"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a.items() if k.endswith(":online_d") and v} == {
        f"m:{m}:online_d": d for m, d in delta.items() if d}


# --- written behind the batch ------------------------------------------------------------


class GatedPresence(Presence):
    """The real presence, its write held until the test opens the gate; `fail` makes the
    write raise instead, `flaky` fails its first try with a transient error."""

    def __init__(self, redis: Redis, *, fail: Exception | None = None,
                 flaky: bool = False) -> None:
        super().__init__(redis, timeout_ms=DAY)
        self.gate = asyncio.Event()
        self.fail, self.flaky, self.tries = fail, flaky, 0

    async def prepare(self, parts: Sequence[Part]) -> Write | None:
        write = await super().prepare(parts)
        if write is None:
            return None

        async def gated() -> None:
            await self.gate.wait()
            self.tries += 1
            if self.fail is not None:
                raise self.fail
            if self.flaky and self.tries == 1:
                raise ConnectionError("valkey went away")
            await write()
        return gated


def joins(room: str, n: int, *, first: int = 0) -> list[Record]:
    """`n` joins on partition 0 of the room's own topics (the ledger's marks are by topic)."""
    return records([ViewerJoined(event_id=f"{room}-{i}", room_id=room, viewer_id=f"v{i}",
                                 ts=T0 + i, source="douyin") for i in range(first, first + n)],
                   first=first, topics=Topics(f"{room}."))


async def test_the_consumed_mark_waits_for_the_write_behind_the_batch(redis: Redis) -> None:
    """A batch returns before its presence is written, but its counts and consumed mark
    wait for the write, and the next batch's return waits for all three: a worker killed
    in between redoes the batch (idempotent by event), it never skips its presence."""
    room = f"rb-{uuid.uuid4().hex[:8]}"
    presence = GatedPresence(redis)
    p = pipeline(redis, presence=presence, topics=Topics(f"{room}."))
    first, second = joins(room, 3), joins(room, 2, first=3)
    await p.process(first)  # returns with the write still held at the gate
    ledger = Ledger(redis)
    assert (await read_stats(redis, room)).get("online") is None
    assert (await read_stats(redis, room)).get("events") is None
    assert f"{room}.viewer-events:0" not in await ledger.consumed()
    nxt = asyncio.ensure_future(p.process(second))
    await asyncio.sleep(0.05)
    assert not nxt.done(), "a second batch ran ahead of the first's write"
    presence.gate.set()
    await nxt
    await p.drain()
    stats = await read_stats(redis, room)
    assert (stats["online"], stats["events"]) == (5, 5)
    assert (await ledger.consumed())[f"{room}.viewer-events:0"] == 4


async def test_a_transient_failure_behind_the_batch_is_retried(redis: Redis) -> None:
    room = f"rt-{uuid.uuid4().hex[:8]}"
    presence = GatedPresence(redis, flaky=True)
    presence.gate.set()
    p = pipeline(redis, presence=presence, topics=Topics(f"{room}."))
    await p.process(joins(room, 4))
    await p.drain()
    assert presence.tries == 2 and p.retries == 1
    stats = await read_stats(redis, room)
    assert (stats["online"], stats["events"]) == (4, 4)


async def test_a_failing_write_behind_the_batch_dead_letters_its_events(redis: Redis) -> None:
    """A bug in the write (not an outage) parks the batch's events as dead letters that
    name the handler, counts them, and moves on, as a handler in line does."""
    room = f"rf-{uuid.uuid4().hex[:8]}"
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> None:
        sent.append((topic, value))

    presence = GatedPresence(redis, fail=ValueError("bad ops"))
    presence.gate.set()
    p = pipeline(redis, presence=presence, send=send, topics=Topics(f"{room}."))
    await p.process(joins(room, 3))
    await p.drain()
    letters = [msgspec.json.decode(v) for t, v in sent if t == Topics(f"{room}.").dead_letters]
    assert len(letters) == 3
    assert all("GatedPresence: ValueError('bad ops')" in letter["error"] for letter in letters)
    stats = await read_stats(redis, room)
    assert stats["dead_letters"] == 3 and "events" not in stats and "online" not in stats
    assert (await Ledger(redis).consumed())[f"{room}.viewer-events:0"] == 2
