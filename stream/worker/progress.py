"""How far the worker has got on each partition it owns, as the read loop moves it.

Two marks per partition: `processed`, the next offset the pipeline has handled, and
`applied`, the next offset whose effects are not all in (the inventory can hold a take's
order records back, stream/worker/orderhold.py, so `applied` can trail `processed`).
Timers beside the read loop judge by them: the engines' tick asks whether a partition is
`behind`, the sweeper which order partitions are read to their end, the status line the
lag. So when a mark moves matters as much as where it lands: see `Progress.process`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from faust.types import TP

from stream.core.batch import Record
from stream.worker.resume import read_to_end

__all__ = ["Progress"]


class Progress:
    """The read loop's marks per topic-partition; see the module's docstring."""

    def __init__(self) -> None:
        self.processed: dict[TP, int] = {}
        self.applied: dict[TP, int] = {}

    def start(self, tp: TP, offset: int) -> None:
        """The partition is (re)sought to `offset`: nothing from there on is handled."""
        self.processed[tp] = self.applied[tp] = offset

    def drop(self, tps: Iterable[TP]) -> None:
        """The partitions are given away: their marks are the next owner's to keep."""
        for tp in tps:
            self.processed.pop(tp, None)
            self.applied.pop(tp, None)

    async def process(self, chunk: Sequence[Record], *,
                      handle: Callable[[Sequence[Record]], Awaitable[None]],
                      held: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        """Hand `chunk` to `handle` (the pipeline), then move the marks past it, back to
        the first record `held` says still waits (topic, partition -> offset).

        Only once `handle` returns: the tick (a timer beside this loop) judged a
        partition whose last records were in a chunk still being applied as read to its
        end, and its engine fired every timer those records cancel
        (`bench/viewer_engine.py`: 528-891 extra nudges on one partition, in 3 of 15
        runs; its orders all came in one take, still in the inventory's hands)."""
        ends = {TP(r.topic, r.partition): r.offset + 1 for r in chunk}
        await handle(chunk)
        self.processed.update(ends)
        self.applied.update(ends)
        for (topic, p), first in held().items():  # read, not applied
            tp = TP(topic, p)
            self.applied[tp] = min(self.applied.get(tp, first), first)

    def behind(self, tp: TP, highwater: int | None) -> bool:
        """Whether the partition holds records the pipeline has not handled, by the
        broker's end as of the last fetch (None: no fetch yet, so assume it does). One
        not started in this process is not behind by this count."""
        return highwater is None or highwater > self.processed.get(tp, highwater)

    def lag(self, tp: TP, highwater: int | None) -> int | None:
        """Records the pipeline has still to handle; None when unknown (no fetch yet, or
        a partition not read in this process that is not empty)."""
        done = self.processed.get(tp, 0 if highwater == 0 else None)
        return None if highwater is None or done is None else max(0, highwater - done)

    def read_to_end(self, highwater: Mapping[TP, int | None]) -> dict[int, bool]:
        """For the partitions of one topic in `highwater` (by number): whether every
        record the broker held at the last fetch is applied (`resume.read_to_end`)."""
        return read_to_end(
            applied={tp.partition: self.applied[tp] for tp in highwater if tp in self.applied},
            highwater={tp.partition: high for tp, high in highwater.items()})
