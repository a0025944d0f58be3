"""The engine against the reference model (tests/reference): random shows that reach every
rule aspect, the simulator's show on the shipped rules, and the golden cases where the two
first disagreed (each was an engine bug: a result that changed with the engine's grace).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from reference import shows
from reference.compare import differences
from reference.model import expect
from reference.offline import processing_order, run_engine
from reference.viewer import visits

from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    CartAdded,
    Event,
    HostEvent,
    Nudge,
    OrderItem,
    OrderPaid,
    OrderPlaced,
    ProductViewed,
    StockSet,
    TagChange,
    ViewerEvent,
    ViewerHeartbeat,
    ViewerJoined,
    ViewerLeft,
)
from stream.engine.rules import Rules, load_dir
from stream.local import showplan

RULES = Path(__file__).resolve().parents[2] / "rules"
GRACE_MS = 3000  # the worker's


@pytest.fixture(scope="module")
def fuzz_rules(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    return load_dir(shows.write_rules(tmp_path_factory.mktemp("rules")))


def compare(rules: Rules, events: list[Event], *, grace_ms: int = GRACE_MS) -> list[str]:
    want = expect(rules, [e for e in events if isinstance(e, HostEvent)],
                  processing_order(events))
    return differences(want, *run_engine(rules, events, grace_ms=grace_ms))


@pytest.mark.parametrize("seed", range(12))
def test_random_shows_match_the_model(fuzz_rules: Rules, seed: int) -> None:
    events = shows.show(seed)
    assert compare(fuzz_rules, events) == []
    assert compare(fuzz_rules, events, grace_ms=0) == []  # grace changes nothing


def test_random_shows_reach_every_aspect(fuzz_rules: Rules) -> None:
    """Otherwise the comparisons above could agree on nothing."""
    want = expect(fuzz_rules, [], [])
    for seed in range(4):
        events = shows.show(seed)
        got = expect(fuzz_rules, [e for e in events if isinstance(e, HostEvent)],
                     processing_order(events))
        want.nudges += got.nudges
        want.tags += got.tags
        want.followups += got.followups
    rules = {(n.rule_id, n.variant) for n in want.nudges}
    assert {r.id for r in fuzz_rules.nudges} == {r for r, _ in rules}
    assert {"holdout", "treatment"} == {v for _, v in rules}
    assert {(t.tag, t.op) for t in want.tags} >= {
        (tag, "add") for tag in ("watch_depth", "interaction", "conversion_node", "drop_off",
                                 "high_potential", "source", "leader", "visitor",
                                 "household", "interest")} | {
        ("high_potential", "remove"), ("drop_off", "remove"), ("source", "remove")}
    assert {f.segment for f in want.followups} == {"ordered", "cart_unpaid", "watched_only"}
    # Visits that timed out, and ones opened by an app event after a leave.
    lapsed = reopened = 0
    for seed in range(4):
        by_viewer: dict[str, list[ViewerEvent]] = {}
        for ev in processing_order(shows.show(seed)):
            by_viewer.setdefault(ev.viewer_id, []).append(ev)
        for evs in by_viewer.values():
            _, after = visits(evs)
            lapsed += sum(a.lapsed for a in after)
            reopened += sum(1 for i in range(1, len(evs)) if after[i - 1].closed
                            and after[i].in_room and not isinstance(evs[i], ViewerJoined))
    assert lapsed and reopened


def test_simulated_show_on_the_shipped_rules_matches_the_model() -> None:
    plan = showplan.plan_for(room_id="sim", viewers=300, duration_s=60, speed=10, seed=3,
                              now_ms=shows.START_MS)
    events = [e for _, e in showplan.broadcast(plan)]
    assert compare(load_dir(RULES), events) == []


# --- golden cases: where engine and model first disagreed ------------------------------

T0 = shows.START_MS


def e(cls: type[Event], t_s: float, **fields: Any) -> Event:
    if not issubclass(cls, HostEvent):
        fields.setdefault("viewer_id", "v")
    e.n += 1  # type: ignore[attr-defined]
    return cls(event_id=f"g{e.n}", room_id="g", ts=T0 + round(t_s * 1000),  # type: ignore[attr-defined]
               **fields)


e.n = 0  # type: ignore[attr-defined]


def show(*viewer: Event, end_s: float = 3600) -> list[Event]:
    return [e(BroadcastStarted, 0), e(StockSet, 0, sku="rice", qty=100, name="米", price=9.9),
            *viewer, e(BroadcastEnded, end_s)]


def engine_and_model(events: list[Event], rules: Rules, **kw: int,
                     ) -> tuple[tuple[list[Nudge], list[TagChange]], tuple[list[Nudge],
                                                                             list[TagChange]]]:
    nudges, tags, _ = run_engine(rules, events, **kw)
    want = expect(rules, [x for x in events if isinstance(x, HostEvent)],
                  processing_order(events))
    return (nudges, tags), (want.nudges, want.tags)


def test_back_in_the_ms_of_leaving_is_still_in_the_room() -> None:
    """A leave and a join in one ms (a reconnect): the engine used to take the viewer as
    gone for good, so no watch time counted after it and no reminder fired (not present).
    The app's heartbeats (every 30 s) keep the visit open past the presence timeout."""
    rules = load_dir(RULES)
    events = show(e(ViewerJoined, 10, source="douyin"), e(ViewerLeft, 20),
                  e(ViewerJoined, 20, source="douyin"),
                  e(CartAdded, 30, sku="rice", qty=1),
                  *(e(ViewerHeartbeat, t) for t in range(60, 401, 30)))
    (nudges, tags), (want_nudges, want_tags) = engine_and_model(events, rules)
    assert [n.rule_id for n in nudges] == [n.rule_id for n in want_nudges] == ["cart-unpaid-5min"]
    assert sorted(map(str, tags)) == sorted(map(str, want_tags))
    assert ("watch_depth", "5-15min", "add") in {(t.tag, t.value, t.op) for t in tags}


def test_a_join_without_a_leave_just_after_the_due_time_does_not_exit() -> None:
    """A dwell due at T and an app restart (join, no leave) at T+1 s: the engine judged T
    with the new visit only, as if the viewer had been away. Heartbeats every 30 s keep
    the visit open until the restart."""
    rules = load_dir(RULES)
    events = show(e(ViewerJoined, 10, source="douyin"), e(ProductViewed, 20, sku="rice"),
                  *(e(ViewerHeartbeat, t) for t in range(50, 200, 30)),
                  e(ViewerJoined, 201, source="douyin"), e(ViewerHeartbeat, 300))
    (nudges, _), (want, _) = engine_and_model(events, rules)
    assert [(n.rule_id, n.ts - T0) for n in nudges] == [(n.rule_id, n.ts - T0) for n in want] \
        == [("dwell-3min", 200_000)]


def test_leaving_and_joining_just_after_the_due_time_is_not_presence_then() -> None:
    """A card opened while away, due at T, a join and a leave 1 and 2 s after T: the viewer
    was not there at T. The engine looked back only at the last leave and said present."""
    rules = load_dir(RULES)
    events = show(e(ViewerJoined, 10, source="douyin"), e(ViewerLeft, 15),
                  e(ProductViewed, 20, sku="rice"), e(ViewerJoined, 201, source="douyin"),
                  e(ViewerLeft, 202), e(ViewerHeartbeat, 300))
    (nudges, _), (want, _) = engine_and_model(events, rules)
    assert nudges == want == []


def test_reminder_asked_again_while_the_first_waits_out_the_grace(tmp_path: Path) -> None:
    """A cart reminder due at T, the same sku ordered at T+2 s: the order asks for its own
    reminder (cap 2 lets it fire). The engine took the first, not yet judged because of the
    grace, as still to come and dropped the second. (Left at 100 s: no cart-5min, whose
    exits stop it, to use up the hourly cap.)"""
    rules = load_dir(shows.write_rules(tmp_path))
    events = show(e(ViewerJoined, 10, source="douyin", tz="Europe/London"),
                  e(CartAdded, 20, sku="rice", qty=1), e(ViewerLeft, 100),
                  e(OrderPlaced, 922, order_id="o1", items=[OrderItem("rice", 1, 9.9)]),
                  e(ViewerHeartbeat, 2000), end_s=3600)
    (nudges, _), (want, _) = engine_and_model(events, rules)
    later = [n.ts - T0 for n in nudges if n.rule_id == "cart-later"]
    assert later == [n.ts - T0 for n in want if n.rule_id == "cart-later"] == [920_000, 1_822_000]
    assert run_engine(rules, events, grace_ms=0)[0] == nudges


def test_paying_just_after_the_end_still_drops_off_at_the_end() -> None:
    """Carted, unpaid at the end, paid 1 s later: drop_off at the end and its removal, as
    with no grace; the engine used to skip both when the payment came within the grace."""
    rules = load_dir(RULES)
    events = show(e(ViewerJoined, 10, source="douyin"), e(CartAdded, 20, sku="rice", qty=1),
                  e(OrderPlaced, 25, order_id="o1", items=[OrderItem("rice", 1, 9.9)]),
                  e(OrderPaid, 601, order_id="o1"), end_s=600)
    (_, tags), (_, want) = engine_and_model(events, rules)
    drops = sorted((t.op, t.ts - T0) for t in tags if t.tag == "drop_off")
    assert drops == sorted((t.op, t.ts - T0) for t in want if t.tag == "drop_off") \
        == [("add", 600_000), ("remove", 601_000)]
    assert run_engine(rules, events, grace_ms=0)[1] == tags


def test_quiet_hours_in_the_zone_the_viewer_had_at_the_due_time(tmp_path: Path) -> None:
    """Due at 22:07 Shanghai (quiet), a join from London (14:07) 2 s later: still quiet.
    The engine judged in the zone of the state at fire time, up to the grace later."""
    rules = load_dir(shows.write_rules(tmp_path))
    events = show(e(ViewerJoined, 10, source="douyin", tz="Asia/Shanghai"),
                  e(ProductViewed, 2004, sku="rice"),
                  e(ViewerJoined, 2246, source="douyin", tz="Europe/London"),
                  e(ViewerHeartbeat, 2300), end_s=3600)
    (nudges, _), (want, _) = engine_and_model(events, rules)
    offair = [n for n in nudges if n.rule_id == "dwell-offair"]
    assert offair == [n for n in want if n.rule_id == "dwell-offair"] == []


def test_a_silent_viewer_times_out() -> None:
    """No app event for the presence timeout (60 s): the visit ended at the last one, so a
    dwell due later finds the viewer gone (exit:left); with the app's heartbeats it fires."""
    rules = load_dir(RULES)
    silent = show(e(ViewerJoined, 10, source="douyin"), e(ProductViewed, 20, sku="rice"),
                  e(ViewerHeartbeat, 400))
    (nudges, tags), (want, want_tags) = engine_and_model(silent, rules)
    assert [n.rule_id for n in nudges] == [n.rule_id for n in want] == []
    assert sorted(map(str, tags)) == sorted(map(str, want_tags))
    beating = show(e(ViewerJoined, 10, source="douyin"), e(ProductViewed, 20, sku="rice"),
                   *(e(ViewerHeartbeat, t) for t in range(50, 401, 30)))
    (nudges, _), (want, _) = engine_and_model(beating, rules)
    assert [(n.rule_id, n.ts - T0) for n in nudges] == [(n.rule_id, n.ts - T0) for n in want] \
        == [("dwell-3min", 200_000)]


def test_an_app_event_after_a_leave_opens_a_visit() -> None:
    """A heartbeat after viewer.left (the leave was the app's mistake, or the viewer came
    back and the join was lost) is a new visit: the viewer is present for the dwell."""
    rules = load_dir(RULES)
    events = show(e(ViewerJoined, 10, source="douyin"), e(ViewerLeft, 20),
                  e(ViewerHeartbeat, 30), e(ProductViewed, 40, sku="rice"),
                  *(e(ViewerHeartbeat, t) for t in range(70, 251, 30)))
    (nudges, tags), (want, want_tags) = engine_and_model(events, rules)
    assert [(n.rule_id, n.ts - T0) for n in nudges] == [(n.rule_id, n.ts - T0) for n in want] \
        == [("dwell-3min", 220_000)]
    assert sorted(map(str, tags)) == sorted(map(str, want_tags))
