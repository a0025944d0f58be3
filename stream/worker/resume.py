"""Where a worker starts a partition after a rebalance: pure, so it is tested alone.

faust seeks each partition to its committed offset, but that commit can be past records
whose effects never reached our state (faust acks a take() batch a rebalance
interrupts). So a partition starts at the lowest of faust's commit, the pipeline's
consumed mark and, for the viewer engine's topics, the viewer state's fence; records
read twice change nothing (every effect is idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping


def start_of(*, committed: int | None, consumed: int | None, fence: int | None,
             engine: bool = False) -> int:
    """The offset to start at: `committed` (faust's next offset), `consumed` (the last
    offset whose counts are in), `fence` (the last offset in the viewer state).

    On a topic of the viewer engine (`engine`), no fence means the saved state holds no
    record of this topic-partition at all, whatever faust or the pipeline consumed: the
    other handlers apply a batch and the pipeline marks it consumed while the engine may
    not have: it drops records of an older generation (a rebalance during the batch),
    and records still waiting in its reorder are dropped with a revoked partition. The
    fence covers both once one is saved; before that, the start is 0. Found by a worker
    joining mid-show (tests/scenarios/test_faults.py): a partition's first order records
    never reached the engine in 3 of 6 runs, and their buyers got the cart-unpaid
    follow-up and tag.
    """
    if engine and fence is None:
        return 0
    marks = [committed] if committed is not None else []
    if consumed is not None:
        marks.append(consumed + 1)
    if fence is not None:
        marks.append(fence + 1)
    # Nothing known: from the start (an offset gone to retention resets to the earliest
    # there is).
    return min(marks, default=0)


def read_to_end(*, applied: Mapping[int, int], highwater: Mapping[int, int | None],
                ) -> dict[int, bool]:
    """For each partition this worker owns (of one topic, by number, the keys of
    `highwater`): whether every record the broker held at the last fetch is applied.
    `applied`: the next offset whose effects are not all in; `highwater`: the broker's end
    as of the last fetch (None: no fetch yet). One owned but not started is not.

    The sweeper moves a partition's inventory clock on by wall time only while it is read
    to its end (stream/store/clocks.py): a partition behind, or whose owner is down, may
    hold the payment of an order whose deadline the wall has passed."""
    return {p: high is not None and p in applied and applied[p] >= high
            for p, high in sorted(highwater.items())}
