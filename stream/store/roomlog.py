"""Host events as a per-room log in Redis, and each worker's cached view of it.

Host events (segments, pins, stock loads, start and end) live on their own topic,
so the worker that owns a viewer's partition learns about them through Redis: the
host path appends each event once to the room's log; every worker reads what is new
and folds it into a RoomTimeline for the viewer engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import msgspec

from stream.core.batch import Part
from stream.core.codec import encode
from stream.core.models import (
    AnyEvent,
    HostEvent,
)
from stream.engine.stock import StockBook
from stream.engine.timeline import RoomTimeline, fold
from stream.store import keys, scripts
from stream.store.connect import Client
from stream.store.stocklog import fold_points

# KEYS: log list, ids set.  ARGV: event id, encoded event.  Appends once per event id.
APPEND = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then redis.call('RPUSH', KEYS[1], ARGV[2]) end
return 1
"""

_decode = msgspec.json.Decoder(AnyEvent).decode


class HostLog:
    """Appends host events to their rooms' logs, each once (by event id)."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._append = redis.register_script(APPEND)

    async def append(self, events: Sequence[HostEvent]) -> None:
        if not events:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                await scripts.call(
                    self._append, keys=[keys.host_log(event.room_id),
                                        keys.host_log_ids(event.room_id)],
                    args=[event.event_id, encode(event)], client=pipe)
            await scripts.execute(pipe)


class RoomLog:
    """Pipeline handler for host events, and a cache of every room's timeline."""

    def __init__(self, redis: Client, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._log = HostLog(redis)
        self._clock = clock
        self.rooms: dict[str, RoomTimeline] = {}
        self._events: dict[str, list[HostEvent]] = {}  # each room's host events, as logged
        self._read: dict[str, int] = {}  # entries of each room's log already folded in
        # Each room's stock changes (its stock log), read alongside the host log.
        self.stock = StockBook()
        self._stock_read: dict[str, int] = {}
        self._checked: dict[str, float] = {}

    async def handle(self, parts: Sequence[Part]) -> None:
        # A record holds events of its own topic only: the host topic's are host events.
        hosts = [e for part in parts if isinstance(part.events[0], HostEvent)
                 for e in part.events if isinstance(e, HostEvent)]
        if not hosts:
            return
        await self._log.append(hosts)
        await self.refresh({e.room_id for e in hosts})

    async def refresh(self, room_ids: Iterable[str], *, since: float | None = None) -> None:
        """Fold in what is new in these rooms' logs, unless read at or after `since` (the
        clock's time; default now). Records fetched from Kafka before `since` need nothing
        newer: the host events before them were in the log by then (the gateway writes
        the log before it answers, and so before anything sent after)."""
        now = self._clock()
        since = now if since is None else since
        due = [r for r in set(room_ids) if self._checked.get(r, float("-inf")) < since]
        if not due:
            return
        starts = {room: self._read.get(room, 0) for room in due}
        stock_starts = {room: self._stock_read.get(room, 0) for room in due}
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in due:
                pipe.lrange(keys.host_log(room), starts[room], -1)
                pipe.lrange(keys.stock_log(room), stock_starts[room], -1)
            answers = await pipe.execute()
        for room, points in zip(due, answers[1::2], strict=True):
            points = points[self._stock_read.get(room, 0) - stock_starts[room]:]
            self._stock_read[room] = self._stock_read.get(room, 0) + len(points)
            fold_points(self.stock, room, points)
        for room, entries in zip(due, answers[::2], strict=True):
            self._checked[room] = now
            # The host agent and the viewer path refresh concurrently: fold in only what a
            # refresh that finished meanwhile did not, or entries are doubled and skipped.
            entries = entries[self._read.get(room, 0) - starts[room]:]
            if not entries and room in self.rooms:
                continue
            self._read[room] = self._read.get(room, 0) + len(entries)
            events = [e for e in map(_decode, entries) if isinstance(e, HostEvent)]
            self._events.setdefault(room, []).extend(events)
            self.rooms[room] = fold(self.rooms.get(room, RoomTimeline(room_id=room)), events)

    def get(self, room_id: str) -> RoomTimeline:
        return self.rooms.get(room_id) or self.rooms.setdefault(
            room_id, RoomTimeline(room_id=room_id))

    def book_at(self, room_id: str, ts: int) -> int:
        """The broadcast (book) of the room an event at `ts` counts for."""
        room = self.rooms.get(room_id)
        return 0 if room is None else room.book_at(ts)

    def ended_book(self, room_id: str, ts: int) -> int:
        """The book of the room's latest broadcast ended at or before `ts` (a follow-up's)."""
        room = self.rooms.get(room_id)
        if room is None:
            return 0
        ended = [i for i, b in enumerate(room.broadcasts)
                 if b.ended_at is not None and b.ended_at <= ts]
        return ended[-1] if ended else room.book_at(ts)

    def timeline_of(self, room_id: str, book: int) -> RoomTimeline:
        """One broadcast's timeline: the host events booked to it, folded."""
        room = self.get(room_id)
        if book == room.current_book() and book == room.book_at(room.started_at or 0):
            return room  # the current broadcast: the timeline itself
        mine = [e for e in self._events.get(room_id, []) if room.book_at(e.ts) == book]
        return fold(RoomTimeline(room_id=room_id), mine)
