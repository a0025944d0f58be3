"""The worker's skipped-record check, pure: which offsets a batch jumped, and where the
records read again go (stream/worker/gaps.py)."""

from __future__ import annotations

from stream.core.batch import Record
from stream.worker.gaps import merged, missing


def _r(topic: str, partition: int, offset: int) -> Record:
    return Record(topic, partition, offset, f"{topic}{partition}@{offset}".encode())


def test_consecutive_offsets_have_no_gap() -> None:
    records = [_r("v", 0, 5), _r("o", 0, 2), _r("v", 0, 6), _r("o", 0, 3)]
    assert missing(records, lambda t, p: {"v": 5, "o": 2}[t]) == []


def test_a_jump_before_and_inside_a_batch() -> None:
    records = [_r("v", 0, 7), _r("v", 0, 8), _r("v", 0, 11), _r("v", 1, 3)]
    expected = {("v", 0): 5, ("v", 1): 3}
    assert missing(records, lambda t, p: expected.get((t, p))) == [
        ("v", 0, 5, 7), ("v", 0, 9, 11)]


def test_an_unknown_partition_starts_at_its_first_record() -> None:
    assert missing([_r("h", 2, 40), _r("h", 2, 42)], lambda t, p: None) == [("h", 2, 41, 42)]


def test_a_re_read_is_not_a_gap() -> None:
    # Records before the expected offset (read again after a seek back) jump nothing.
    assert missing([_r("v", 0, 3), _r("v", 0, 4), _r("v", 0, 10)], lambda t, p: 10) == []


def test_found_records_go_in_place() -> None:
    records = [_r("v", 0, 7), _r("o", 0, 1), _r("v", 0, 10)]
    found = [_r("v", 0, 9), _r("v", 0, 5), _r("v", 0, 6), _r("v", 0, 8)]
    out = merged(records, found)
    assert [(r.topic, r.offset) for r in out] == [
        ("v", 5), ("v", 6), ("v", 7), ("o", 1), ("v", 8), ("v", 9), ("v", 10)]
    assert merged(records, []) == records
