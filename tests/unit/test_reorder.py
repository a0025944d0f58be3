"""Merging a partition's two input topics back into event-time order (pure)."""

from __future__ import annotations

from operator import itemgetter

from stream.engine.reorder import Reorder

VIEW, ORD = "viewer-events", "order-events"
Ev = tuple[int, str]  # (ts, name)


def reorder() -> Reorder[Ev]:
    return Reorder((VIEW, ORD), ts=itemgetter(0))


def names(out: list[Ev]) -> list[str]:
    return [name for _, name in out]


def test_nothing_waits_when_no_topic_is_behind() -> None:
    r = reorder()
    r.add(ORD, 0, [(50, "order@50")])
    r.add(VIEW, 0, [(10, "view@10")])
    assert names(r.release(set())) == ["view@10", "order@50"]
    assert len(r) == 0
    assert r.fences() == {VIEW: 0, ORD: 0}


def test_a_topic_read_ahead_waits_for_the_one_behind() -> None:
    """Orders read minutes ahead of the views (a takeover): they wait until the views
    catch up, then everything leaves in event-time order."""
    r = reorder()
    for offset, ts in enumerate((100, 200, 300)):
        r.add(ORD, offset, [(ts, f"order@{ts}")])
    r.add(VIEW, 0, [(150, "view@150")])
    assert names(r.release({VIEW})) == ["order@100", "view@150"]
    assert r.fences() == {VIEW: 0, ORD: 0}  # orders 1 and 2 still wait: not in the state yet
    assert len(r) == 2
    r.add(VIEW, 1, [(250, "view@250")])
    assert names(r.release({VIEW})) == ["order@200", "view@250"]
    assert r.fences() == {VIEW: 1, ORD: 1}
    assert names(r.release(set())) == ["order@300"]
    assert r.fences() == {VIEW: 1, ORD: 2}


def test_a_behind_topic_never_seen_holds_everything() -> None:
    r = reorder()
    r.add(VIEW, 7, [(10, "view")])
    assert r.release({ORD}) == []
    assert r.fences() == {VIEW: 6}
    assert r.watermark({ORD}) == float("-inf")


def test_until_holds_what_no_topic_of_the_partition_holds() -> None:
    """A limit from outside (other partitions' orders still being read): nothing past
    it leaves, even with every topic of this partition read."""
    r = reorder()
    r.add(VIEW, 0, [(10, "view@10")])
    r.add(VIEW, 1, [(20, "view@20")])
    r.add(ORD, 0, [(30, "order@30")])
    assert names(r.release(set(), until=15)) == ["view@10"]
    assert names(r.release({ORD}, until=25)) == ["view@20"]
    assert r.release(set(), until=float("-inf")) == []
    assert names(r.release(set())) == ["order@30"]


def test_ties_put_the_viewer_topic_first_then_arrival() -> None:
    r = reorder()
    r.add(ORD, 0, [(5, "order")])
    r.add(VIEW, 3, [(5, "view-a"), (5, "view-b")])  # an envelope: two events of one record
    r.add(VIEW, 4, [(5, "view-c")])
    assert names(r.release(set())) == ["view-a", "view-b", "view-c", "order"]


def test_an_envelope_out_of_order_leaves_sorted() -> None:
    r = reorder()
    r.add(VIEW, 0, [(30, "c"), (10, "a"), (20, "b")])
    r.add(ORD, 0, [(15, "order")])
    assert names(r.release(set())) == ["a", "order", "b", "c"]


def test_an_envelope_leaves_whole() -> None:
    """Part of a record released, then a restart from its offset, would apply that part
    twice: events wait until their whole record can leave, and all before it too."""
    r = reorder()
    r.add(VIEW, 4, [(10, "a"), (30, "b")])
    r.add(ORD, 0, [(20, "order")])
    assert r.release({ORD}) == []  # "a" could go, but "b" of its record cannot
    assert r.fences() == {VIEW: 3, ORD: -1}
    r.add(ORD, 1, [(25, "order2")])
    assert r.release({ORD}) == []
    r.add(ORD, 2, [(35, "order3")])
    assert names(r.release({ORD})) == ["a", "order", "order2", "b", "order3"]
    assert r.fences() == {VIEW: 4, ORD: 2}
    assert r.last(VIEW) == 4 and r.last(ORD) == 2
