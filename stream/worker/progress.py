"""How far the worker has got on each partition it owns, as the read loop moves it.

One mark per partition, `processed`: the next offset the pipeline has handled. Timers
beside the read loop judge by it: the engines' tick asks whether a partition is
`behind`, the sweeper which order partitions are read to their end, the status line the
lag. So when the mark moves matters as much as where it lands: see `Progress.process`.

Read to its end also asks what the inventory holds back (stream/worker/orderhold.py): a
take may hold a partition's order records while another partition is behind. That is
asked when judged, not kept as a second mark: the hold is released by a take of another
partition's records, or by the sweep, with no record of its own partition to move a
mark, and a show's last records come once. A kept mark said such a partition behind for
good, and the other workers' timers waited at its newest order for ever (the cluster
oracle: 1,021 of 2,000 follow-ups after 90 s, the partition's word 91.6 s old).
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

    def start(self, tp: TP, offset: int) -> None:
        """The partition is (re)sought to `offset`: nothing from there on is handled."""
        self.processed[tp] = offset

    def drop(self, tps: Iterable[TP]) -> None:
        """The partitions are given away: their marks are the next owner's to keep."""
        for tp in tps:
            self.processed.pop(tp, None)

    async def process(self, chunk: Sequence[Record], *,
                      handle: Callable[[Sequence[Record]], Awaitable[None]]) -> None:
        """Hand `chunk` to `handle` (the pipeline), then move the marks past it.

        Only once `handle` returns: the tick (a timer beside this loop) judged a
        partition whose last records were in a chunk still being applied as read to its
        end, and its engine fired every timer those records cancel
        (`bench/viewer_engine.py`: 528-891 extra nudges on one partition, in 3 of 15
        runs; its orders all came in one take, still in the inventory's hands)."""
        ends = {TP(r.topic, r.partition): r.offset + 1 for r in chunk}
        await handle(chunk)
        self.processed.update(ends)

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

    def read_to_end(self, highwater: Mapping[TP, int | None], *,
                    held: Mapping[tuple[str, int], int]) -> dict[int, bool]:
        """For the partitions of one topic in `highwater` (by number): whether every
        record the broker held at the last fetch is applied (`resume.read_to_end`):
        handled, and not held back now (`held`: topic, partition -> the offset of its
        first record still waiting)."""
        return read_to_end(
            applied={tp.partition: min(done, held.get((tp.topic, tp.partition), done))
                     for tp in highwater if (done := self.processed.get(tp)) is not None},
            highwater={tp.partition: high for tp, high in highwater.items()})
