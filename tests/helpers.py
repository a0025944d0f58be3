"""Small builders shared by tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiohttp import ClientSession
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.core.auth import Tokens
from stream.core.batch import Handler, SendMany
from stream.core.codec import decode_events
from stream.core.config import Settings
from stream.core.models import FollowUp, Nudge, OrderResult, StockUpdate, TagChange
from stream.core.topics import Topics
from stream.engine.rules import load_dir
from stream.gateway.app import Gateway
from stream.local.embedded import free_port
from stream.store import keys
from stream.store.clocks import parse_reading
from stream.store.connect import Client
from stream.store.inventory import Audit, Inventory
from stream.store.ledger import Ledger, read_stats
from stream.store.roomlog import RoomLog
from stream.worker.admin import ensure_topics
from stream.worker.app import group_id
from stream.worker.engagement import Engagement
from stream.worker.orders import Orders
from stream.worker.pipeline import Pipeline
from stream.worker.statusfile import WorkerStatus
from stream.worker.stockfeed import StockFeed

_ids = itertools.count()

# The reservation TTL of the `inv` fixture (tests/conftest.py): long enough that no
# reservation expires during a test unless the test moves the clock past it.
INVENTORY_TTL_MS = 60_000

RULES = Path(__file__).resolve().parents[1] / "rules"


def now_ms() -> int:
    return int(time.time() * 1000)


def ev(type_: str, **fields: Any) -> dict[str, Any]:
    """A valid event dict of `type_` with fresh ids; `fields` override or add."""
    base: dict[str, Any] = {"type": type_, "event_id": f"e{next(_ids)}-{time.time_ns()}",
                            "room_id": "r1", "ts": now_ms()}
    if not type_.startswith(("segment.", "product.pinned", "broadcast.", "stock.")):
        base["viewer_id"] = "v1"
    if type_.startswith("order."):
        base["order_id"] = "o1"
    base.update(fields)
    return base



class Sends:
    """The worker's two ways to send (`send`, `send_many`) on a real producer, for tests
    that drive the pipeline and the viewer path by hand; the topics `send_many` wrote."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.topics: list[str] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> object:
        return await self.producer.send(topic, value, key=key, partition=partition)

    async def send_many(self, topic: str, partition: int,
                        records: Sequence[tuple[bytes | None, bytes]]) -> object:
        ack: object = None
        for key, value in records:
            self.topics.append(topic)
            ack = await self.producer.send(topic, value, key=key, partition=partition)
        return ack


def collector(results: list[tuple[int, OrderResult]]) -> SendMany:
    """A `send_many` for `Orders` built by hand: each order result kept with the partition
    it was sent to, acked at once."""
    async def send(topic: str, partition: int,
                   records: Sequence[tuple[bytes | None, bytes]]) -> Awaitable[object]:
        results.extend((partition, msgspec.json.decode(value, type=OrderResult))
                       for _, value in records)
        acked: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked
    return send


def viewer_path(redis: Client, settings: Settings, sends: Sends, *,
                behind: Callable[[str, int], bool] = lambda topic, partition: False,
                clock: Callable[[], float] = time.time,
                unapplied: Callable[[], float] = lambda: float("inf"),
                selling: bool = False) -> tuple[Engagement, Pipeline]:
    """The worker's viewer path built by hand on real Redis and Kafka, for tests that play
    a rebalance: an Engagement with the repository's rules, a Pipeline in front of it,
    both sending through `sends`. `selling`: also the host log and the inventory, which
    runs first as in the worker (its levels feed the engines' stock book)."""
    rules = load_dir(RULES)
    topics = Topics(settings.topic_prefix)
    rooms = RoomLog(redis)
    engagement = Engagement(redis=redis, rules=lambda: rules, rooms=rooms,
                            send=sends.send_many, topics=topics,
                            bootstrap=settings.kafka_bootstrap, behind=behind, clock=clock,
                            unapplied=unapplied)
    first: list[Handler] = []
    if selling:
        async def publish(updates: list[StockUpdate]) -> None:
            return None  # the coalesced feed to screens is not what these tests look at

        first.append(Orders(redis=redis, inventory=Inventory(redis), topics=topics,
                            feed=StockFeed(publish, clock=clock), send=sends.send_many,
                            partitions=settings.partitions, clock=clock, stock=rooms.stock,
                            rooms=rooms))
    return engagement, Pipeline(topics=topics, ledger=Ledger(redis), send=sends.send,
                                first=first,
                                handlers=[rooms, engagement] if selling else [engagement],
                                book_of=rooms.book_at if selling else None)


async def show_stats(redis: Client, room: str) -> dict[str, int | float]:
    """A room's first show's counters with the events after its end, which count for the
    room's next broadcast (RoomTimeline.book_at): books 0 and 1 summed. A settle on book 0
    alone waited for ever once host events were answered before later viewer events: a
    few leaves and heartbeats sent after broadcast.ended (8 of 20,819) went to book 1."""
    first, after = await read_stats(redis, room, 0), await read_stats(redis, room, 1)
    return {k: first.get(k, 0) + after.get(k, 0) for k in first.keys() | after.keys()}


async def uncounted(settings: Settings, stats: dict[str, int | float],
                    ) -> dict[str, tuple[int, int | float]]:
    """Per event type whose count differs: (events of it in the input log, counted in
    `stats`). What a test that never settled says about where the events went."""
    logged = Counter(type(e).__struct_config__.tag for _, _, _, v in
                     await read_all(settings, list(Topics(settings.topic_prefix).inputs))
                     for _, e in decode_events(v).events)
    return {t: (n, stats.get(f"ev:{t}", 0)) for t, n in logged.items()
            if stats.get(f"ev:{t}", 0) != n}


async def uncommitted(settings: Settings) -> dict[str, int]:
    """Per input topic-partition (`topic:p`), the records the worker group has not
    committed, where any. With `uncounted`, what a show that never settled says: events
    stuck behind an uncommitted offset, or read and committed yet not counted."""
    topics = Topics(settings.topic_prefix)
    tps = [TopicPartition(t, p) for t in topics.inputs for p in range(settings.partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                group_id=group_id(settings.topic_prefix),
                                enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        behind = {tp: end - (await consumer.committed(tp) or 0) for tp, end in ends.items()}
    finally:
        await consumer.stop()
    return {f"{tp.topic.removeprefix(topics.prefix)}:{tp.partition}": n
            for tp, n in sorted(behind.items()) if n}


async def orders_read(settings: Settings, redis: Client) -> dict[int, str]:
    """Per order-topic partition, what its owner last told the other workers
    (`keys.orders_read`): how long ago it was read to its end, and the newest order ts
    applied from it. While that word is older than READ_STALE_MS, the other workers'
    timers wait at that ts (`Engagement._others_until`): what a show whose follow-ups
    stopped short says about which partition held them."""
    read_at, applied_ms = parse_reading(await redis.hgetall(
        keys.orders_read(Topics(settings.topic_prefix).prefix)))
    now_ms = time.time() * 1000
    return {p: (f"read to its end {(now_ms - read_at[p]) / 1000:.1f} s ago" if p in read_at
                else "never read to its end") + f", applied to ts {applied_ms.get(p)}"
            for p in range(settings.partitions)}


async def read_all(settings: Settings, topics: list[str]) -> list[tuple[str, int, int, bytes]]:
    """Every record of `topics`: (topic, partition, offset, value)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[str, int, int, bytes]] = []
    try:
        want = -1
        while True:
            # Asked again once reached: tansu's end offset can trail a write it already
            # acked by a moment (the last envelope of a test was missing 1 run in 3).
            ends = await consumer.end_offsets(list(consumer.assignment()))
            if sum(ends.values()) == want:
                break
            want = sum(ends.values())
            while len(out) < want:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.topic, r.partition, r.offset, r.value) for r in records]
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    return out


def assert_nothing_twice(*streams: Sequence[msgspec.Struct]) -> None:
    for items in streams:
        repeated = [k for k, n in Counter(msgspec.json.encode(i) for i in items).items() if n > 1]
        assert not repeated, f"{len(repeated)} delivered twice, e.g. {repeated[0]!r}"


async def read_effects(settings: Settings, topics: Topics) -> dict[str, list[Any]]:
    """The nudges, tags and follow-ups on the output topics, by topic: none of the three
    empty, no effect twice."""
    outputs = await read_all(settings, [topics.nudges, topics.tags, topics.followups])
    decoded: dict[str, list[Any]] = {
        t: [msgspec.json.decode(v, type=k) for tp, _, _, v in outputs if tp == t]
        for t, k in ((topics.nudges, Nudge), (topics.tags, TagChange),
                     (topics.followups, FollowUp))}
    assert all(decoded.values()), {t: len(v) for t, v in decoded.items()}
    assert_nothing_twice(*decoded.values())
    return decoded


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, *, tokens: Tokens | None = None,
                          ) -> AsyncIterator[tuple[Gateway, str, Tokens]]:
    """A gateway in this process on a free port, the test's topics created, fresh tokens
    (or `tokens`, to run several gateways of one deployment): (gateway, base url, tokens)."""
    await ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                        partitions=settings.partitions)
    tokens = Tokens.generate() if tokens is None else tokens
    gateway = Gateway(settings, tokens)
    port = free_port()
    await gateway.start(port=port)
    try:
        yield gateway, f"http://127.0.0.1:{port}", tokens
    finally:
        await gateway.stop()


@dataclass
class Sample:
    """One look at a room's books while a sale runs."""

    refused_before: int  # sold_out refusals counted before the books were read
    audit: Audit
    available: int       # summed over the room's SKUs (and a bucketed SKU's buckets)


@dataclass
class Auditor:
    """Samples the room's books every ~50 ms while a sale runs (`run` as a task)."""

    inventory: Inventory
    room: str
    samples: list[Sample] = field(default_factory=list)
    stopped: bool = False

    async def run(self) -> None:
        # Ended by `stop`, not by cancelling the task alone: a cancel that lands inside the
        # cluster client's retry can be swallowed there, and the loop then ran on for ever
        # (test_cluster's contention sale hung to its 300 s timeout, the loop's 50 ms
        # sleep the only timer left).
        while not self.stopped:
            # The refusals first: a sold_out counted before books that still show stock
            # is an order refused while there was some (underselling).
            refused = await self.inventory.redis.hget(keys.stats(self.room),
                                                      "orders_rejected:sold_out")
            audit = await self.inventory.audit(self.room)
            levels = await self.inventory.levels(self.room)
            self.samples.append(Sample(int(refused or 0), audit,
                                       sum(u.available for u in levels)))
            await asyncio.sleep(0.05)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End the sampling `task` (this auditor's `run`) and wait for it, 10 s at most."""
        self.stopped = True
        task.cancel()
        await asyncio.wait([task], timeout=10)


@dataclass
class Poster:
    """POSTs events to one gateway, or to several of one deployment (one set of tokens)
    in turn, request by request, as a load balancer without stickiness would; every
    answer must be a 202. The sale tests' client."""

    session: ClientSession
    urls: list[str]
    tokens: Tokens
    _turn: Iterator[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        assert self.urls, "urls: no gateway"
        self._turn = itertools.cycle(self.urls)

    @property
    def url(self) -> str:
        """The first gateway (where a test's SSE clients connect)."""
        return self.urls[0]

    async def post(self, events: list[dict[str, Any]], role: str) -> dict[str, Any]:
        """One request to the next gateway; its answer (`accepted`, `rejected`)."""
        headers = {"Authorization": f"Bearer {self.tokens.for_role(role)}"}  # type: ignore[arg-type]
        async with self.session.post(f"{next(self._turn)}/v1/events",
                                     data=orjson.dumps(events), headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async def post_all(self, bodies: list[list[dict[str, Any]]], role: str, *,
                       in_flight: int) -> list[dict[str, Any]]:
        """Every body, `in_flight` requests at a time; the answers in the bodies' order."""
        gate = asyncio.Semaphore(in_flight)

        async def one(body: list[dict[str, Any]]) -> dict[str, Any]:
            async with gate:
                return await self.post(body, role)

        return await asyncio.gather(*(one(b) for b in bodies))


def kill_mattered(victim: WorkerStatus, survivors: Sequence[WorkerStatus], *,
                  killed_at: float) -> list[str]:
    """Why killing `victim` at `killed_at` (wall clock) tested nothing, or [] if it did.

    It did when the victim held partitions when it died (its last assignment) and a
    survivor, after the kill, started one of them below the offset the victim had read
    it to: then the survivor re-read records the victim had processed, and what the test
    checks afterwards (nothing lost, nothing twice) was at stake. A clean stop after a
    full commit, or a victim without partitions, leaves nothing to re-read.
    """
    problems = []
    if not victim.assigned:
        problems.append(f"worker {victim.pid} held no partition when it was killed")
    reread = [(start.topic, start.partition, start.offset, done)
              for topic, partition in victim.assigned
              if (done := victim.read.get(f"{topic}:{partition}")) is not None
              for survivor in survivors for start in survivor.starts
              if start.at > killed_at and (start.topic, start.partition) == (topic, partition)
              and start.offset < done]
    if not reread:
        after = [(s.topic, s.partition, s.offset) for w in survivors for s in w.starts
                 if s.at > killed_at]
        problems.append(f"no survivor re-read a record worker {victim.pid} had processed "
                        f"(it had read {victim.read}; starts after the kill: {after})")
    return problems
