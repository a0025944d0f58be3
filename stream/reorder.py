"""Merging a partition's two input topics back into event-time order.

A viewer's views and their orders travel on two topics, read independently. Live, both
are read as they come and a short grace covers the skew. After a takeover or a stall
one topic can be read minutes of show ahead of the other, and an order from the
future would fire the reminders that the views it has not caught up with cancel.

So events wait here until no topic that is still behind can bring an earlier one (its
newest event time, since each topic is in time order), and leave in event-time order
(viewer topic first at a tie, then arrival). A topic that is fully read holds nothing
back. Pure; the caller says which topics are behind.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from typing import Generic, TypeVar

T = TypeVar("T")

_NEVER = float("inf")


class Reorder(Generic[T]):
    """One partition's events from several topics, released in event-time order."""

    def __init__(self, topics: tuple[str, ...]) -> None:
        self._rank = {topic: i for i, topic in enumerate(topics)}
        self._heap: list[tuple[int, int, int, str, int, T]] = []
        self._seq = itertools.count()
        self._newest: dict[str, int] = {}  # newest event time seen per topic
        self._waiting: dict[str, Counter[int]] = {t: Counter() for t in topics}
        self._last: dict[str, int] = {}  # newest offset added per topic
        self._spans: dict[tuple[str, int], list[int]] = {}  # waiting record -> [min, max] ts

    def add(self, topic: str, offset: int, ts: int, item: T) -> None:
        heapq.heappush(self._heap, (ts, self._rank[topic], next(self._seq), topic, offset, item))
        self._waiting[topic][offset] += 1
        self._last[topic] = max(offset, self._last.get(topic, -1))
        self._newest[topic] = max(ts, self._newest.get(topic, ts))
        span = self._spans.setdefault((topic, offset), [ts, ts])
        span[0], span[1] = min(span[0], ts), max(span[1], ts)

    def last(self, topic: str) -> int:
        """The newest offset added from `topic` (-1 if none)."""
        return self._last.get(topic, -1)

    def watermark(self, behind: set[str]) -> float:
        """Event time up to which nothing earlier can still come from the topics `behind`."""
        return min((self._newest.get(t, -_NEVER) for t in behind), default=_NEVER)

    def release(self, behind: set[str]) -> list[tuple[str, int, T]]:
        """(topic, offset, item) of every event up to the watermark, in event-time order.

        Whole records only: a record (an envelope) released in part would be read again
        from its offset after a restart, and its released events applied twice. So the
        limit stops short of any record that reaches past it.
        """
        limit, out = self.watermark(behind), []
        while True:
            cut = min((lo - 1 for lo, hi in self._spans.values() if hi > limit), default=_NEVER)
            if cut >= limit:
                break
            limit = cut
        while self._heap and self._heap[0][0] <= limit:
            _, _, _, topic, offset, item = heapq.heappop(self._heap)
            waiting = self._waiting[topic]
            waiting[offset] -= 1
            if not waiting[offset]:
                del waiting[offset]
                del self._spans[topic, offset]
            out.append((topic, offset, item))
        return out

    def fences(self) -> dict[str, int]:
        """Per topic, the highest offset all of whose events (and all before) are released."""
        out = {}
        for topic, last in self._last.items():
            waiting = self._waiting[topic]
            out[topic] = min(waiting) - 1 if waiting else last
        return out

    def __len__(self) -> int:
        return len(self._heap)
