"""Timers run on the watermark over the engine's two inputs (stream/engine/watermark.py).

The oracle scenario's flake, made deterministic: the order topic read 7 s of show ahead
of the viewer topic, and a view that cancels a dwell timer arriving after those orders
(late in processing order, early in event time). The result must be the one the same
events give in event-time order, whatever the two inputs' skew.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reference import shows
from reference.compare import differences
from reference.model import expect
from reference.offline import orders_ahead, processing_order, run_engine
from test_viewers import DWELL, MIN, S, Show

from stream.core.models import Event, HostEvent, Nudge, OrderEvent, ViewerEvent
from stream.engine.effects import Effect
from stream.engine.rules import Rules, load_dir
from stream.engine.watermark import INPUT_IDLE_MS, QUIET_MS
from stream.local import showplan

GRACE_MS = 3000  # the worker's
RULES = Path(__file__).resolve().parents[2] / "rules"


def skewed_show(*, order_lead_ms: int) -> tuple[list[ViewerEvent], list[ViewerEvent]]:
    """v1 watches rice from 1 s (dwell due at 181 s) and turns to oil at 180 s; v2 orders
    every 2 s. Returns (events in event-time order, events as a worker with the order
    topic `order_lead_ms` ahead of the viewer topic applies them)."""
    show = Show(grace_ms=GRACE_MS, hold_inputs=True)
    views = [show.event("viewer.joined", 0, source="douyin"),
             show.event("viewer.joined", 0, "v2", source="douyin"),
             show.event("product.viewed", 1 * S, sku="rice")]
    views += [show.event("viewer.heartbeat", t * S, "v2") for t in range(2, 180)]
    views.append(show.event("product.viewed", 180 * S, sku="oil"))  # cancels the dwell
    views += [show.event("viewer.heartbeat", t * S, "v2") for t in range(181, 200)]
    orders = [show.event("order.placed", t * S, "v2", order_id=f"o{t}",
                         items=[{"sku": "oil", "qty": 1, "price": 1.0}])
              for t in range(150, 200, 2)]
    in_time = sorted(views + orders, key=lambda e: (e.ts, isinstance(e, OrderEvent)))
    # Processing order: each order goes in as soon as the views have reached its time
    # minus the lead (the order topic is read that far ahead).
    skewed: list[ViewerEvent] = []
    pending = list(orders)
    for view in views:
        while pending and pending[0].ts - order_lead_ms <= view.ts:
            skewed.append(pending.pop(0))
        skewed.append(view)
    return in_time, skewed + pending


def run(events: list[ViewerEvent], *, end_ms: int = 10 * MIN) -> list[Effect]:
    show = Show(grace_ms=GRACE_MS, hold_inputs=True)
    for event in events:
        show.out += show.engine.apply(event, show.room)
    show.advance(end_ms)
    return show.out


def dwell_nudges(effects: list[Effect]) -> list[tuple[str, str | None, int]]:
    return [(e.viewer_id, e.sku, e.ts) for e in effects
            if isinstance(e, Nudge) and e.rule_id == DWELL["id"]]


def test_orders_7s_ahead_of_the_views_fire_no_timer_a_late_view_cancels() -> None:
    in_time, skewed = skewed_show(order_lead_ms=7 * S)
    # The processing order really is the flake's: the oil view (ts 180 s) comes after an
    # order whose ts is past the dwell's due time plus the grace (181 s + 3 s).
    oil = next(i for i, e in enumerate(skewed) if getattr(e, "sku", None) == "oil")
    assert any(isinstance(e, OrderEvent) and e.ts > 184 * S for e in skewed[:oil])
    expected = run(in_time)
    assert ("v1", "rice", Show().room.started_at + 181 * S) not in dwell_nudges(expected)
    assert dwell_nudges(run(skewed)) == dwell_nudges(expected)
    assert run(skewed) == expected  # every effect, not only the nudge


def test_any_skew_below_the_idle_timeout_gives_the_event_time_result() -> None:
    in_time, _ = skewed_show(order_lead_ms=0)
    expected = run(in_time)
    for lead_ms in (1 * S, 3 * S, 5 * S, 7 * S, INPUT_IDLE_MS - S):
        assert run(skewed_show(order_lead_ms=lead_ms)[1]) == expected, lead_ms


def test_a_quiet_order_input_holds_timers_at_most_the_idle_timeout() -> None:
    """One order early in the show, then views only: the dwell fires once the views are
    INPUT_IDLE_MS past the order's time, not at the order's time forever."""
    show = Show(grace_ms=GRACE_MS, hold_inputs=True)
    show.join(0)
    show.join(0, "v2")
    show.send("product.viewed", 1 * S, sku="rice")
    show.send("order.placed", 180 * S, "v2", order_id="o1",
              items=[{"sku": "oil", "qty": 1, "price": 1.0}])
    due = 181 * S
    last = due + GRACE_MS + INPUT_IDLE_MS  # the views' time that lets it through
    for t in range(181 * S, last, S):
        show.send("viewer.heartbeat", t, "v2")
    assert dwell_nudges(show.out) == []  # held by the order input, still within the idle
    show.send("viewer.heartbeat", last + S, "v2")
    assert dwell_nudges(show.out) == [("v1", "rice", show.room.started_at + due)]


def test_a_show_without_orders_fires_as_each_event_passes_the_grace() -> None:
    show = Show(grace_ms=GRACE_MS, hold_inputs=True)
    show.join(0)
    show.send("product.viewed", 1 * S, sku="rice")
    show.send("viewer.heartbeat", 181 * S + GRACE_MS)
    assert dwell_nudges(show.out) == []
    show.send("viewer.heartbeat", 181 * S + GRACE_MS + 1)
    assert len(dwell_nudges(show.out)) == 1


def test_a_silent_room_fires_once_its_clock_is_quiet_past_its_newest_event() -> None:
    """Orders 7 s ahead, then nothing: the room's clock (newest event plus wall time) moves
    on, and the views' input stops holding once it is QUIET_MS past the newest event."""
    show = Show(grace_ms=GRACE_MS, hold_inputs=True)
    show.join(0)
    show.send("product.viewed", 1 * S, sku="rice")
    show.send("viewer.heartbeat", 178 * S)
    show.place(185 * S, "oil", viewer="v2", order="o2")  # 7 s ahead: holds at 178 s
    assert show.advance(185 * S + QUIET_MS - 1) == []
    assert dwell_nudges(show.advance(185 * S + QUIET_MS)) == [
        ("v1", "rice", show.room.started_at + 181 * S)]


# --- the reference model (tests/reference) with the order topic read ahead ----------------

@pytest.fixture(scope="module")
def fuzz_rules(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    return load_dir(shows.write_rules(tmp_path_factory.mktemp("rules")))


def model_differences(rules: Rules, events: list[Event], *, lead_ms: int) -> list[str]:
    """The engine fed with orders `lead_ms` ahead of the views, against the model over
    the events in event-time order."""
    want = expect(rules, [e for e in events if isinstance(e, HostEvent)],
                  processing_order(events))
    got = run_engine(rules, events, grace_ms=GRACE_MS, order=orders_ahead(lead_ms))
    return differences(want, *got)


@pytest.mark.parametrize("seed", range(4))
def test_random_shows_with_orders_read_ahead_match_the_model(fuzz_rules: Rules,
                                                              seed: int) -> None:
    events = shows.show(seed)
    for lead_ms in (7 * S, INPUT_IDLE_MS - S):
        assert orders_ahead(lead_ms)(events) != processing_order(events)
        assert model_differences(fuzz_rules, events, lead_ms=lead_ms) == [], lead_ms


def test_the_simulated_show_with_orders_read_7s_ahead_matches_the_model() -> None:
    """The oracle scenario's skew on its own show and the shipped rules, without a stack."""
    plan = showplan.plan_for(room_id="sim", viewers=300, duration_s=60, speed=10, seed=3,
                              now_ms=shows.START_MS)
    events = [e for _, e in showplan.broadcast(plan)]
    assert model_differences(load_dir(RULES), events, lead_ms=7 * S) == []
