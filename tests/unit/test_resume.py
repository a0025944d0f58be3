"""Where a partition starts after a rebalance (stream.worker.resume.start_of)."""

from __future__ import annotations

from stream.worker.resume import start_of


def test_the_lowest_mark_wins() -> None:
    assert start_of(committed=40, consumed=29, fence=19) == 20
    assert start_of(committed=40, consumed=29, fence=None) == 30
    assert start_of(committed=12, consumed=29, fence=39) == 12
    assert start_of(committed=None, consumed=None, fence=None) == 0


def test_an_engine_topic_without_a_fence_starts_from_the_beginning() -> None:
    # The engine applied none of this topic-partition's records (it dropped them as of an
    # older generation), though faust committed them and the pipeline counted them.
    assert start_of(committed=4, consumed=3, fence=None, engine=True) == 0
    assert start_of(committed=4, consumed=3, fence=None, engine=False) == 4
    assert start_of(committed=40, consumed=29, fence=19, engine=True) == 20
