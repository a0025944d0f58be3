"""Merging a partition's two input topics back into event-time order.

A viewer's views and their orders travel on two topics, read independently. Live, both
are read as they come and a short grace covers the skew. After a takeover or a stall
one topic can be read minutes of show ahead of the other, and an order from the
future would fire the reminders that the views it has not caught up with cancel.

So records wait here until no topic that is still behind can bring an earlier event
(its newest event time, since each topic is in time order), and their events leave in
event-time order (viewer topic first at a tie, then arrival). A topic that is fully
read holds nothing back. Pure; the caller says which topics are behind.

Bookkeeping is per record (an envelope of up to hundreds of events), never per event:
the only per-event work is one sort of what leaves, which timsort does in a pass over
the already ordered runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")

_NEVER = float("inf")


class _Waiting(NamedTuple, Generic[T]):
    lo: int  # earliest and latest event time in the record
    hi: int
    rank: int  # the topic's place in the tie order
    seq: int  # arrival
    topic: str
    offset: int
    items: Sequence[T]


class Reorder(Generic[T]):
    """One partition's records from several topics, released in event-time order."""

    def __init__(self, topics: tuple[str, ...], *, ts: Callable[[T], int]) -> None:
        self._rank = {topic: i for i, topic in enumerate(topics)}
        self._ts = ts
        self._records: list[_Waiting[T]] = []
        self._seq = itertools.count()
        self._newest: dict[str, int] = {}  # newest event time seen per topic
        self._last: dict[str, int] = {}  # newest offset added per topic
        self._size = 0

    def add(self, topic: str, offset: int, items: Sequence[T]) -> None:
        """One record's events (a record is added once, whole)."""
        if not items:
            return
        times = list(map(self._ts, items))
        lo, hi = min(times), max(times)
        self._records.append(_Waiting(lo, hi, self._rank[topic], next(self._seq), topic,
                                      offset, items))
        self._size += len(items)
        self._last[topic] = max(offset, self._last.get(topic, -1))
        self._newest[topic] = max(hi, self._newest.get(topic, hi))

    def last(self, topic: str) -> int:
        """The newest offset added from `topic` (-1 if none)."""
        return self._last.get(topic, -1)

    def newest(self, topic: str) -> float:
        """The newest event time added from `topic` (-inf if none)."""
        return self._newest.get(topic, -_NEVER)

    def watermark(self, behind: set[str]) -> float:
        """Event time up to which nothing earlier can still come from the topics `behind`."""
        return min((self._newest.get(t, -_NEVER) for t in behind), default=_NEVER)

    def release(self, behind: set[str], *, until: float = _NEVER) -> list[T]:
        """Every event up to the watermark (and up to `until`), in event-time order.

        `until` is a limit from outside the partition: what the caller knows only up to
        a time (the stock levels of orders on other partitions still being read).

        Whole records only: a record (an envelope) released in part would be read again
        from its offset after a restart, and its released events applied twice. So the
        limit stops short of any record that reaches past it.
        """
        limit = min(self.watermark(behind), until)
        while True:
            cut = min((r.lo - 1 for r in self._records if r.hi > limit), default=_NEVER)
            if cut >= limit:
                break
            limit = cut
        going = [r for r in self._records if r.hi <= limit]
        if not going:
            return []
        self._records = [r for r in self._records if r.hi > limit]
        going.sort(key=lambda r: (r.rank, r.seq))
        out = [item for r in going for item in r.items]
        out.sort(key=self._ts)  # stable: ties keep the topic rank, then arrival
        self._size -= len(out)
        return out

    def fences(self) -> dict[str, int]:
        """Per topic, the highest offset all of whose events (and all before) are released."""
        out = dict(self._last)
        for r in self._records:
            out[r.topic] = min(out[r.topic], r.offset - 1)
        return out

    def __len__(self) -> int:
        return self._size
