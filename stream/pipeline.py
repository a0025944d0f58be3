"""The worker's batch path, free of faust: records in, effects and outputs out.

Faust hands us a batch of raw Kafka records (`stream.take_events`); each record holds
one event or an envelope of many. Decoding, dead-lettering, dispatch to handlers and
the once-per-record counters all happen here per batch, so per-event cost stays a
few microseconds of Python instead of a trip through faust's per-record loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.codec import BodyError, decode_events, encode
from stream.deadletters import dead_letter, room_of
from stream.ledger import Ledger, RoomBatch
from stream.models import Event, Origin
from stream.topics import Topics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures that pass: the batch is retried (the partition waits) rather than dead-lettered.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    generation: int = 0  # the consumer group generation it was fetched in


@dataclass(frozen=True, slots=True)
class Item:
    """One decoded event and the record it came in."""

    record: Record
    event: Event


class Send(Protocol):
    def __call__(self, topic: str, value: bytes, key: bytes | None = None,
                 partition: int | None = None) -> Awaitable[object]: ...


class Handler(Protocol):
    """A capability (inventory, viewer engine, metrics): takes a batch, must be idempotent."""

    async def handle(self, items: Sequence[Item]) -> None: ...


@dataclass(slots=True)
class BatchResult:
    events: int = 0
    dead_letters: int = 0
    skipped: int = 0
    by_room: dict[str, int] = field(default_factory=dict)


class Pipeline:
    def __init__(self, *, topics: Topics, ledger: Ledger, send: Send,
                 handlers: Sequence[Handler] = (),
                 counters: Callable[[Event], Iterable[tuple[str, int]]] | None = None,
                 clock: Callable[[], float] = time.time,
                 retry_delays: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)) -> None:
        self._topics = topics
        self._ledger = ledger
        self._send = send
        self._handlers = list(handlers)
        # More once-per-record counts per event: the host's metrics (`metrics.counters`).
        self._counters = counters
        self._clock = clock
        self._retry_delays = retry_delays
        self.retries = 0

    async def process(self, records: Sequence[Record]) -> BatchResult:
        result = BatchResult()
        items: list[Item] = []
        counts: dict[tuple[str, str, int], RoomBatch] = {}

        def counter(room: str, record: Record) -> Counter[str]:
            key = (room, record.topic, record.partition)
            batch = counts.get(key) or counts.setdefault(
                key, RoomBatch(room, record.topic, record.partition))
            return batch.at(record.offset)

        letters: list[bytes] = []
        now_ms = int(self._clock() * 1000)

        def reject(record: Record, raw: bytes, error: str, index: int | None) -> None:
            origin = Origin(source="kafka", topic=record.topic, partition=record.partition,
                            offset=record.offset, index=index)
            letters.append(dead_letter(raw, error, origin, now_ms=now_ms))
            counter(room_of(raw), record)["dead_letters"] += 1

        for record in records:
            try:
                decoded = decode_events(record.value)
            except BodyError as exc:
                reject(record, record.value, str(exc), None)
                continue
            for rejection in decoded.rejected:
                reject(record, rejection.raw, rejection.error, rejection.index)
            for index, event in decoded.events:
                home = self._topics.for_role(type(event).role)
                if home != record.topic:
                    error = (f"type: {type(event).__struct_config__.tag} belongs on {home}, "
                             f"not {record.topic}")
                    reject(record, encode(event), error, index)
                    continue
                items.append(Item(record, event))

        await self._run_handlers(items, reject)
        for item in items:
            tag = type(item.event).__struct_config__.tag
            c = counter(item.event.room_id, item.record)
            c["events"] += 1
            c[f"ev:{tag}"] += 1
            if self._counters is not None:
                for name, delta in self._counters(item.event):
                    c[name] += delta
            result.by_room[item.event.room_id] = result.by_room.get(item.event.room_id, 0) + 1
        for letter in letters:
            await self._send(self._topics.dead_letters, letter)
        result.skipped = await self.retrying(lambda: self._ledger.apply(list(counts.values())))
        # Where a new owner starts: faust's commit can run ahead of what was processed (it
        # acks a take() batch a rebalance interrupts, and records it then drops as stale).
        ends: dict[str, int] = {}
        for record in records:
            key = f"{record.topic}:{record.partition}"
            ends[key] = max(ends.get(key, -1), record.offset)
        await self.retrying(lambda: self._ledger.mark_consumed(ends))
        result.events = len(items)
        result.dead_letters = len(letters)
        return result

    async def _run_handlers(self, items: list[Item],
                            reject: Callable[[Record, bytes, str, int | None], None]) -> None:
        for handler in self._handlers:
            try:
                await self.retrying(lambda h=handler: h.handle(items))
            except Exception as exc:  # a bug, not an outage: park the batch, keep the worker
                log.exception("handler %s failed; dead-lettering %d events", handler, len(items))
                for item in items:
                    reject(item.record, encode(item.event),
                           f"internal: {type(handler).__name__}: {exc!r}", None)
                items.clear()

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with backoff, forever: the partition waits, nothing is lost."""
        attempt = 0
        while True:
            try:
                return await call()
            except TRANSIENT as exc:
                delay = self._retry_delays[min(attempt, len(self._retry_delays) - 1)]
                attempt += 1
                self.retries += 1
                log.warning("transient failure (%r); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)

