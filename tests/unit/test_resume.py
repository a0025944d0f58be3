"""Where a partition starts after a rebalance (stream.worker.resume.start_of), and which
partitions are read to their end (read_to_end)."""

from __future__ import annotations

from stream.worker.resume import read_to_end, start_of


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


def test_read_to_end_is_every_record_the_broker_held_applied() -> None:
    applied = {0: 12, 1: 7, 2: 0, 3: 5}
    highwater: dict[int, int | None] = {0: 12, 1: 9, 2: 0, 3: None, 4: 0}
    # 1 is behind; 3 has had no fetch yet; 4 is owned but not started (not in applied).
    assert read_to_end(applied=applied, highwater=highwater) == {
        0: True, 1: False, 2: True, 3: False, 4: False}
    # A partition no longer owned (not in highwater) is not this worker's to tell.
    assert read_to_end(applied=applied, highwater={1: 7}) == {1: True}
