"""A backlog's order records, held until the worker's other order partitions catch up.

The inventory applies each call's orders merged by event time (`orders._merged`), but a
worker reading a backlog gets a partition's records in takes of its own pace: one take
can hold partition A's order at 70 s while partition B, behind, has not yet given the
`payment_failed` at 65 s that frees the unit A needs. A was refused, the unit went to
nobody, and the viewer engines' stock book said one left from 65 s on
(tests/integration/test_take_order.py; `bench/viewer_engine.py` sent 6,459 nudges where
the show in event time sends 1,313, 3 times in 18 runs in session 14).

So an order record waits while its newest event is more than `slack_ms` past W, the
newest order read on the worker's order partitions still behind (the least of them).
Live, the partitions run within milliseconds of each other and nothing waits; the slack
also keeps a partition a little behind from holding every other one. Pure: the worker
commits a take's new state only once the inventory has applied what it released, and
caps the pipeline's consumed mark at the first held record, so a crash reads it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stream.core.batch import Part

# 2 s of event time. Live at 1x, two partitions read together differ by about a take
# (10-50 ms), so nothing waits; a replay at 10x or 100x makes that 0.1-5 s of show, and
# an order then waits a take or two. Two orders 2 s apart are a tie for the last unit.
HOLD_SLACK_MS = 2000


@dataclass(slots=True)
class Held:
    """Per order partition: the records waiting, in offset order, and the newest event
    time read from it (held or not)."""

    parts: dict[int, list[Part]] = field(default_factory=dict)
    read_ms: dict[int, int] = field(default_factory=dict)


def take(held: Held, parts: Sequence[Part], behind: Iterable[int], *,
         slack_ms: int = HOLD_SLACK_MS) -> tuple[list[Part], Held]:
    """The order parts (all of one order topic) to apply now, and the state after: `held`
    plus `parts` (a part already held, as in a retried call, is not added again), less
    what W now lets through. `behind`: this worker's order partitions still behind."""
    waiting = {p: list(ps) for p, ps in held.parts.items()}
    read_ms = dict(held.read_ms)
    for part in parts:
        p = part.record.partition
        queue = waiting.setdefault(p, [])
        if queue and part.record.offset <= queue[-1].record.offset:
            continue
        queue.append(part)
        newest = max(e.ts for e in part.events)
        read_ms[p] = max(newest, read_ms.get(p, newest))
    limit = min((read_ms.get(p, -(2**62)) for p in behind), default=2**62) + slack_ms
    # A record is applied whole, and an envelope of 500 events spans minutes of show: a
    # record held for its newest event holds its oldest too, so nothing newer than that
    # (plus the slack) may go either. Holding lowers the limit, so this ends. Without it,
    # 7 envelopes held from 17 minutes before the limit were applied after the orders
    # of those 17 minutes on the other partitions (`bench/viewer_engine.py`: 850 orders
    # reserved where event time reserves 848, in every run).
    while True:
        cuts = {p: _cut(queue, limit) for p, queue in waiting.items()}
        floor = min((min(e.ts for e in queue[cuts[p]].events)
                     for p, queue in waiting.items() if cuts[p] < len(queue)), default=None)
        if floor is None or floor + slack_ms >= limit:
            break
        limit = floor + slack_ms
    now = [part for p, queue in waiting.items() for part in queue[:cuts[p]]]
    return now, Held({p: q[cuts[p]:] for p, q in waiting.items() if q[cuts[p]:]}, read_ms)


def _cut(queue: Sequence[Part], limit: int) -> int:
    """How many records of `queue`, from its start, have no event past `limit`."""
    cut = 0
    while cut < len(queue) and max(e.ts for e in queue[cut].events) <= limit:
        cut += 1
    return cut


def first_held(held: Held) -> dict[int, int]:
    """Partition -> the offset of its first record still waiting."""
    return {p: q[0].record.offset for p, q in held.parts.items() if q}


def drop(held: Held, partitions: Iterable[int]) -> Held:
    """Without `partitions` (revoked: their next owner reads them again)."""
    gone = set(partitions)
    return Held({p: q for p, q in held.parts.items() if p not in gone},
                {p: ms for p, ms in held.read_ms.items() if p not in gone})
