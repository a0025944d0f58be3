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
        progress.process(records(VIEWS, range(10)), handle=handle, held=dict))
    await inside.wait()
    assert progress.behind(VIEWS, highwater=10), "read to its end while being applied"
    assert progress.lag(VIEWS, highwater=10) == 10
    go_on.set()
    await task
    assert not progress.behind(VIEWS, highwater=10)
    assert progress.lag(VIEWS, highwater=10) == 0
    assert progress.behind(VIEWS, highwater=11)


async def test_held_orders_keep_applied_back_while_processed_moves_on() -> None:
    progress = Progress()
    progress.start(ORDERS, 0)

    async def handle(chunk: Sequence[Record]) -> None:
        pass

    # The inventory holds the partition's records from offset 3 on (orderhold.py).
    await progress.process(records(ORDERS, range(8)), handle=handle,
                           held=lambda: {(ORDERS.topic, ORDERS.partition): 3})
    assert not progress.behind(ORDERS, highwater=8)
    assert progress.read_to_end({ORDERS: 8}) == {0: False}
    # Released on the next take: nothing held, so applied catches up.
    await progress.process(records(ORDERS, range(8, 9)), handle=handle, held=dict)
    assert progress.read_to_end({ORDERS: 9}) == {0: True}


async def test_a_failed_chunk_moves_no_mark() -> None:
    progress = Progress()
    progress.start(VIEWS, 5)

    async def handle(chunk: Sequence[Record]) -> None:
        raise ConnectionError("Redis away")

    with pytest.raises(ConnectionError):
        await progress.process(records(VIEWS, range(5, 9)), handle=handle, held=dict)
    assert progress.behind(VIEWS, highwater=9)
    assert progress.read_to_end({VIEWS: 9}) == {0: False}


def test_given_away_partitions_are_forgotten_and_no_fetch_is_unknown() -> None:
    progress = Progress()
    progress.start(VIEWS, 4)
    assert progress.lag(VIEWS, highwater=None) is None
    assert progress.behind(VIEWS, highwater=None)
    progress.drop([VIEWS])
    # Not read in this process: unknown lag unless the partition is empty.
    assert progress.lag(VIEWS, highwater=7) is None
    assert progress.lag(VIEWS, highwater=0) == 0
    assert progress.read_to_end({VIEWS: 7}) == {0: False}
