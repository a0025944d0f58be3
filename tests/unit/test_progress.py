"""The read loop's marks per partition (stream.worker.progress.Progress), without a broker:
what a timer beside the loop sees while a chunk is still being applied."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from faust.types import TP

from stream.core.batch import Record
from stream.worker.progress import Progress

VIEWS = TP("lc.viewer-events", 0)
ORDERS = TP("lc.order-events", 0)


def records(tp: TP, offsets: range) -> list[Record]:
    return [Record(tp.topic, tp.partition, o, b"{}") for o in offsets]


async def test_a_chunk_still_being_applied_leaves_its_partition_behind() -> None:
    # The engines' tick runs beside the read loop. While the pipeline still works on a
    # partition's last records, the tick must see it behind, or the engine fires every
    # timer those records cancel (bench/viewer_engine.py: 528-891 extra nudges).
    progress = Progress()
    progress.start(VIEWS, 0)
    inside = asyncio.Event()
    go_on = asyncio.Event()

    async def handle(chunk: Sequence[Record]) -> None:
        inside.set()
        await go_on.wait()

    task = asyncio.create_task(
        progress.process(records(VIEWS, range(10)), handle=handle))
    await inside.wait()
    assert progress.behind(VIEWS, highwater=10), "read to its end while being applied"
    assert progress.lag(VIEWS, highwater=10) == 10
    go_on.set()
    await task
    assert not progress.behind(VIEWS, highwater=10)
    assert progress.lag(VIEWS, highwater=10) == 0
    assert progress.behind(VIEWS, highwater=11)


async def test_held_orders_are_not_read_to_the_end_while_processed_moves_on() -> None:
    progress = Progress()
    progress.start(ORDERS, 0)

    async def handle(chunk: Sequence[Record]) -> None:
        pass

    await progress.process(records(ORDERS, range(8)), handle=handle)
    assert not progress.behind(ORDERS, highwater=8)
    # The inventory holds the partition's records from offset 3 on (orderhold.py).
    assert progress.read_to_end({ORDERS: 8},
                                held={(ORDERS.topic, ORDERS.partition): 3}) == {0: False}
    # Released on the next take: nothing held.
    await progress.process(records(ORDERS, range(8, 9)), handle=handle)
    assert progress.read_to_end({ORDERS: 9}, held={}) == {0: True}
    assert progress.read_to_end({ORDERS: 10}, held={}) == {0: False}  # one more to read


async def test_a_hold_released_without_a_chunk_of_its_own_leaves_nothing_behind() -> None:
    """The inventory holds partition 1's last orders while partition 0 is behind; then
    partition 0's next chunk (or the sweep, with no chunk at all) releases them. No
    record of partition 1 comes again at a show's end, so it must be read to its end by
    then: a partition said behind for good froze the other workers' timers at its
    newest order (the cluster oracle: 1,021 of 2,000 follow-ups after 90 s, its word
    91.6 s old)."""
    progress = Progress()
    other = TP(ORDERS.topic, 1)
    progress.start(ORDERS, 0)
    progress.start(other, 0)
    held: dict[tuple[str, int], int] = {}

    async def handle(chunk: Sequence[Record]) -> None:
        if chunk[0].partition == 1:
            held[other.topic, other.partition] = 4  # 4.. wait for partition 0
        else:
            held.clear()  # partition 0 caught up: the take applies them

    def ends() -> dict[int, bool]:
        return progress.read_to_end({ORDERS: 3, other: 6}, held=held)

    await progress.process(records(other, range(6)), handle=handle)
    assert ends() == {0: False, 1: False}
    await progress.process(records(ORDERS, range(3)), handle=handle)
    assert ends() == {0: True, 1: True}
    # The sweep's take, no chunk at all: what it releases is applied as it returns.
    held[other.topic, other.partition] = 5
    assert ends() == {0: True, 1: False}
    held.clear()
    assert ends() == {0: True, 1: True}


async def test_a_failed_chunk_moves_no_mark() -> None:
    progress = Progress()
    progress.start(VIEWS, 5)

    async def handle(chunk: Sequence[Record]) -> None:
        raise ConnectionError("Redis away")

    with pytest.raises(ConnectionError):
        await progress.process(records(VIEWS, range(5, 9)), handle=handle)
    assert progress.behind(VIEWS, highwater=9)
    assert progress.read_to_end({VIEWS: 9}, held={}) == {0: False}


def test_given_away_partitions_are_forgotten_and_no_fetch_is_unknown() -> None:
    progress = Progress()
    progress.start(VIEWS, 4)
    assert progress.lag(VIEWS, highwater=None) is None
    assert progress.behind(VIEWS, highwater=None)
    progress.drop([VIEWS])
    # Not read in this process: unknown lag unless the partition is empty.
    assert progress.lag(VIEWS, highwater=7) is None
    assert progress.lag(VIEWS, highwater=0) == 0
    assert progress.read_to_end({VIEWS: 7}, held={}) == {0: False}
