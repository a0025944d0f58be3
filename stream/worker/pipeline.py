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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TypeVar

from stream.core.batch import BehindHandler, BookOf, Handler, Part, Record, Send, Write, by_book
from stream.core.codec import BodyError, decode_events, encode
from stream.core.deadletters import dead_letter, room_of
from stream.core.models import Event, Origin
from stream.core.topics import Topics
from stream.store.connect import TRANSIENT_REDIS, is_transient
from stream.store.ledger import Ledger, RoomBatch

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures that pass: the batch is retried (the partition waits) rather than dead-lettered.
# On a Redis Cluster these include MOVED/ASK left over after redis-py's own redirects, a
# failover's CLUSTERDOWN and READONLY (see stream/store/connect.py).
TRANSIENT = (*TRANSIENT_REDIS, ConnectionError, OSError, TimeoutError)


class Pipeline:
    def __init__(self, *, topics: Topics, ledger: Ledger, send: Send,
                 handlers: Sequence[Handler] = (), first: Sequence[Handler] = (),
                 behind: Sequence[BehindHandler] = (),
                 count: Callable[[Sequence[Event], Counter[str]], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 retry_delays: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
                 book_of: BookOf | None = None,
                 held: Callable[[], Mapping[tuple[str, int], int]] | None = None) -> None:
        self._topics = topics
        # (topic, partition) -> the first offset a handler still holds back unapplied
        # (Orders.held_from): nothing from there on is marked consumed.
        self._held = held
        self._book_of = book_of
        self._ledger = ledger
        self._send = send
        self._handlers = list(handlers)
        # Handlers whose results the others read (the inventory's stock levels, which the
        # viewer engines judge nudges by): each batch runs them to the end first.
        self._first = list(first)
        # Handlers no other reads from (presence): computed beside the others, written
        # while the next batch is processed, before this one's consumed mark.
        self._behind_handlers = list(behind)
        # More once-per-record counts of events: the host's metrics (`counters.count`).
        self._count = count
        self._homes: dict[type[Event], str] = {}  # event type -> the topic it belongs on
        self._tags: dict[type[Event], str] = {}  # event type -> its `ev:` counter
        self._clock = clock
        self._retry_delays = retry_delays
        self.retries = 0
        self.events_processed = 0  # for the worker's status line
        self._tail: asyncio.Future[None] | None = None

    async def process(self, records: Sequence[Record]) -> None:
        parts: list[Part] = []
        counts: dict[tuple[str, int, str, int], RoomBatch] = {}

        def counter(room: str, record: Record, book: int = 0) -> Counter[str]:
            key = (room, book, record.topic, record.partition)
            batch = counts.get(key) or counts.setdefault(
                key, RoomBatch(room, record.topic, record.partition, book))
            return batch.at(record.offset)

        letters: list[bytes] = []
        now_ms = int(self._clock() * 1000)

        def reject(record: Record, raw: bytes, error: str, index: int | None) -> None:
            origin = Origin(source="kafka", topic=record.topic, partition=record.partition,
                            offset=record.offset, index=index)
            letters.append(dead_letter(raw, error, origin, now_ms=now_ms))
            room = room_of(raw)  # no trusted event time: the book on air now
            book = self._book_of(room, now_ms) if self._book_of is not None else 0
            counter(room, record, book)["dead_letters"] += 1

        for record in records:
            try:
                decoded = decode_events(record.value)
            except BodyError as exc:
                reject(record, record.value, str(exc), None)
                continue
            for rejection in decoded.rejected:
                reject(record, rejection.raw, rejection.error, rejection.index)
            events = [event for _, event in decoded.events]
            if any(self._home(t) != record.topic for t in set(map(type, events))):
                events = []
                for index, event in decoded.events:
                    home = self._home(type(event))
                    if home != record.topic:
                        error = (f"type: {type(event).__struct_config__.tag} belongs on "
                                 f"{home}, not {record.topic}")
                        reject(record, encode(event), error, index)
                    else:
                        events.append(event)
            if events:
                parts.append(Part(record, events, frozenset(e.room_id for e in events)))

        writes = await self._run_handlers(parts, reject)
        self.events_processed += sum(len(part.events) for part in parts)
        for letter in letters:
            await self._send(self._topics.dead_letters, letter)
        letters.clear()
        ends: dict[str, int] = {}
        for record in records:
            key = f"{record.topic}:{record.partition}"
            ends[key] = max(ends.get(key, -1), record.offset)
        if self._held is not None:
            for (topic, partition), first in self._held().items():
                key = f"{topic}:{partition}"
                if key in ends:
                    ends[key] = min(ends[key], first - 1)
        # The behind writes, the counts and the consumed mark go while the next batch is
        # decoded and judged, in order (a count applied early would fence off the one
        # before); one batch's may wait while the next is processed, no more.
        previous = self._tail
        self._tail = asyncio.ensure_future(self._write_behind(
            previous, writes, parts, reject, letters, counter, counts, ends))
        if previous is not None:
            await previous

    async def _write_behind(self, previous: asyncio.Future[None] | None,
                            writes: list[tuple[BehindHandler, Write]], parts: list[Part],
                            reject: Callable[[Record, bytes, str, int | None], None],
                            letters: list[bytes],
                            counter: Callable[[str, Record, int], Counter[str]],
                            counts: dict[tuple[str, int, str, int], RoomBatch],
                            ends: dict[str, int]) -> None:
        if previous is not None:
            await previous
        failed: list[str] = []
        for handler, write in writes:
            await self._guarded(handler, write, failed)
        if failed:
            self._reject_all(parts, reject, failed)
            for letter in letters:
                await self._send(self._topics.dead_letters, letter)
        for part in parts:
            for room in part.rooms:
                in_room = part.events if len(part.rooms) == 1 else [
                    e for e in part.events if e.room_id == room]
                for book, mine in by_book(in_room, room, self._book_of):
                    c = counter(room, part.record, book)
                    c["events"] += len(mine)
                    for cls, n in Counter(map(type, mine)).items():
                        c[self._tag(cls)] += n
                    if self._count is not None:
                        self._count(mine, c)
        batches = list(counts.values())
        await self.retrying(lambda: self._ledger.apply(batches))
        # Where a new owner starts: faust's commit can run ahead of what was processed (it
        # acks a take() batch a rebalance interrupts, and records it then drops as stale).
        # Marked only once the counts are in.
        await self.retrying(lambda: self._ledger.mark_consumed(ends))

    async def drain(self) -> None:
        """Wait until the last batch's behind writes, counts and consumed mark are in Redis."""
        if self._tail is not None:
            await self._tail  # each waits for the one before

    async def _run_handlers(self, parts: list[Part],
                            reject: Callable[[Record, bytes, str, int | None], None],
                            ) -> list[tuple[BehindHandler, Write]]:
        """The `first` handlers, then all the others at once: each waits on Redis while
        another computes. Returns the behind handlers' writes, still to run."""
        failed: list[str] = []
        for handler in self._first:
            await self._guarded(handler, partial(handler.handle, parts), failed)
        done = await asyncio.gather(
            *(self._guarded(h, partial(h.handle, parts), failed) for h in self._handlers),
            *(self._guarded(h, partial(h.prepare, parts), failed)
              for h in self._behind_handlers))
        if failed:  # nothing of a dead-lettered batch is written behind it
            self._reject_all(parts, reject, failed)
            return []
        prepared = done[len(self._handlers):]  # gather keeps the order it was given
        return [(handler, write) for handler, write in zip(self._behind_handlers, prepared,
                                                           strict=True) if write is not None]

    async def _guarded(self, handler: Handler | BehindHandler, call: Callable[[], Awaitable[T]],
                       failed: list[str]) -> T | None:
        """`call`, retried through outages. A bug (not an outage) is logged and noted in
        `failed`: the batch is parked as dead letters and the worker goes on."""
        try:
            return await self.retrying(call)
        except Exception as exc:
            log.exception("handler %s failed", handler)
            failed.append(f"{type(handler).__name__}: {exc!r}")
            return None

    @staticmethod
    def _reject_all(parts: list[Part], reject: Callable[[Record, bytes, str, int | None], None],
                    failed: list[str]) -> None:
        """Dead-letter every event of the batch after a handler's bug, and forget them."""
        log.error("dead-lettering %d events", sum(len(part.events) for part in parts))
        for part in parts:
            for event in part.events:
                reject(part.record, encode(event), f"internal: {'; '.join(failed)}", None)
        parts.clear()

    def _home(self, cls: type[Event]) -> str:
        home = self._homes.get(cls)
        if home is None:
            home = self._homes[cls] = self._topics.for_role(cls.role)
        return home

    def _tag(self, cls: type[Event]) -> str:
        tag = self._tags.get(cls)
        if tag is None:
            tag = self._tags[cls] = f"ev:{cls.__struct_config__.tag}"
        return tag

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with backoff, forever: the partition waits, nothing is lost."""
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                if not isinstance(exc, TRANSIENT) and not is_transient(exc):
                    raise
                delay = self._retry_delays[min(attempt, len(self._retry_delays) - 1)]
                attempt += 1
                self.retries += 1
                log.warning("transient failure (%r); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)

