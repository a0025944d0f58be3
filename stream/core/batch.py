"""The worker's batch types: a Kafka record, its decoded events, and the ways out.

Every handler (inventory, viewer engine, presence, host log) takes `Part`s, one per
record, and sends through `Send` / `SendMany`; they live here, below the store and
the worker, so both can name them without importing each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

from stream.core.models import Event

_ts = attrgetter("ts")


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    generation: int = 0  # the consumer group generation it was fetched in
    taken: float = 0.0  # when the worker took it (time.monotonic): it was fetched before


@dataclass(frozen=True, slots=True)
class Part:
    """One record's decoded events, in record order (an envelope holds hundreds)."""

    record: Record
    events: list[Event]
    rooms: frozenset[str]  # of the events


class Send(Protocol):
    def __call__(self, topic: str, value: bytes, key: bytes | None = None,
                 partition: int | None = None) -> Awaitable[object]: ...


_ts = attrgetter("ts")


BookOf = Callable[[str, int], int]
"""(room, event ts) -> the broadcast (book) of the room the event counts for."""


def by_book(events: Sequence[Event], room: str, book_of: BookOf | None,
            ) -> list[tuple[int, Sequence[Event]]]:
    """One room's events split by book; books grow with time, so events whose earliest and
    latest share a book are all of it (the usual case: one pass in C, two look-ups)."""
    if book_of is None or not events:
        return [(0, events)]
    times = list(map(_ts, events))
    first = book_of(room, min(times))
    if first == book_of(room, max(times)):
        return [(first, events)]
    out: dict[int, list[Event]] = {}
    for e in events:
        out.setdefault(book_of(room, e.ts), []).append(e)
    return list(out.items())


def newest_by_room(parts: Sequence[Part]) -> dict[str, int]:
    """The newest event time per room in these parts."""
    newest: dict[str, int] = {}
    for part in parts:
        if len(part.rooms) == 1:  # the usual envelope: one pass in C
            (room,) = part.rooms
            ts = max(map(_ts, part.events))
            if newest.get(room, 0) < ts:
                newest[room] = ts
        else:
            for e in part.events:
                if newest.get(e.room_id, 0) < e.ts:
                    newest[e.room_id] = e.ts
    return newest


class SendMany(Protocol):
    """Records (key, value) to one partition, in order; returns the last one's ack, to
    await later (acks come in order within a partition: the last covers the rest)."""

    def __call__(self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes]],
                 ) -> Awaitable[Awaitable[object]]: ...


class Handler(Protocol):
    """A capability (inventory, viewer engine, metrics): takes a batch, must be idempotent."""

    async def handle(self, parts: Sequence[Part]) -> None: ...


# What a handler behind the batch still has to write: run once, in batch order, and
# again on a transient failure (so it must be idempotent, as `handle` is).
Write = Callable[[], Awaitable[None]]


class BehindHandler(Protocol):
    """A handler that no other handler of the batch reads from (presence): it computes
    in line with them, and its writes land while the next batch is processed, before
    this batch's consumed mark."""

    async def prepare(self, parts: Sequence[Part]) -> Write | None: ...


