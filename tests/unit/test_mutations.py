"""The reference model catches bugs: seven deliberately broken engines, each run offline
over small random shows, must disagree with it (and the real engine agrees, see
test_reference.py). Plus the comparison the fault test uses, with one record dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reference import shows
from reference.compare import differences
from reference.model import Expected, expect
from reference.offline import processing_order, run_engine

import stream.engine
from stream.core.models import Event, HostEvent, OrderPaid
from stream.engine import tags as engine_tags
from stream.engine import timers
from stream.engine.nudges import CART
from stream.engine.rules import Rules, load_dir
from stream.engine.state import ViewerState
from stream.engine.state import present_at as real_present
from stream.engine.timeline import RoomTimeline
from stream.engine.viewers import ViewerEngine

SEEDS = range(3)

# The mutants patch the engine's Python (its functions, a subclass of ViewerEngine), which
# a compiled engine neither sees nor allows: `make test` runs this file again on the
# plain-Python engine (LIVECOMMERCE_ENGINE=pure), and that run is where it counts.
pytestmark = pytest.mark.skipif(
    stream.engine.ENGINE == "compiled",
    reason="mutants patch the Python engine; make test runs them with LIVECOMMERCE_ENGINE=pure")


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    return load_dir(shows.write_rules(tmp_path_factory.mktemp("rules")))


@pytest.fixture(scope="module")
def cases(rules: Rules) -> list[tuple[list[Event], Expected]]:
    out = []
    for seed in SEEDS:
        events = shows.show(seed, viewers=100)
        out.append((events, expect(rules, [e for e in events if isinstance(e, HostEvent)],
                                   processing_order(events))))
    return out


class PaymentKeepsCartTimers(ViewerEngine):
    """Broken: a payment does not cancel the cart_unpaid timers of its skus."""

    def _on_paid(self, s: ViewerState, e: OrderPaid, room: RoomTimeline,
                 out: list[Any]) -> None:
        disarm = self._disarm

        def keep_cart(s: ViewerState, kind: str, sku: str, ts: int) -> None:
            if kind != CART:
                disarm(s, kind, sku, ts)  # type: ignore[arg-type]

        self._disarm = keep_cart  # type: ignore[method-assign,assignment]
        try:
            super()._on_paid(s, e, room, out)
        finally:
            del self._disarm


def no_exits(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    """Broken: exits are not re-checked when the nudge is due."""
    monkeypatch.setattr(timers, "exit_reason", lambda *a, **k: None)
    return ViewerEngine


def no_cooldown(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    """Broken: the cooldown is ignored (the per-broadcast and hourly caps still hold)."""
    real = timers.cap_reason

    def cap_reason(rule: Any, fired: Any, hour: Any, per_hour: int, ts: int) -> Any:
        reason = real(rule, fired, hour, per_hour, ts)
        return real(rule, None, hour, per_hour, ts) if reason == "cooldown" else reason

    monkeypatch.setattr(timers, "cap_reason", cap_reason)
    return ViewerEngine


def no_zone(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    """Broken: quiet hours in the default zone, whatever the viewer's."""
    real = timers.in_quiet_hours
    monkeypatch.setattr(timers, "in_quiet_hours", lambda w, ts, tz: real(w, ts, None))
    return ViewerEngine


def payment_keeps_cart(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    return PaymentKeepsCartTimers


def swapped_segment(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    """Broken: carted-but-unpaid viewers get the watched-only follow-up and back."""
    real = engine_tags.followup_segment
    swap = {"cart_unpaid": "watched_only", "watched_only": "cart_unpaid", "ordered": "ordered"}
    monkeypatch.setattr(engine_tags, "followup_segment", lambda **kw: swap[real(**kw)])
    return ViewerEngine


class NoPresenceTimeout(ViewerEngine):
    """Broken: a visit never times out (present until a leave, as before presence did)."""

    def _lapse(self, s: ViewerState, ts: int) -> None:
        pass


def no_presence_timeout(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    monkeypatch.setattr(timers, "present_at", lambda s, ts, timeout_ms=0: real_present(
        s, ts, 10**12))
    return NoPresenceTimeout


class LapseKeepsFocus(ViewerEngine):
    """Broken: a visit that timed out keeps its product in focus (and its dwell timer)."""

    def _lapse(self, s: ViewerState, ts: int) -> None:
        focus = s.focus
        s.focus = ""
        super()._lapse(s, ts)
        s.focus = focus


def lapse_keeps_focus(monkeypatch: pytest.MonkeyPatch) -> type[ViewerEngine]:
    return LapseKeepsFocus


MUTANTS: dict[str, Callable[[pytest.MonkeyPatch], type[ViewerEngine]]] = {
    "exits not re-checked at fire time": no_exits,
    "cooldown ignored": no_cooldown,
    "quiet-hours zone ignored": no_zone,
    "cart_unpaid timer not cancelled by payment": payment_keeps_cart,
    "a follow-up segment swapped": swapped_segment,
    "presence never times out": no_presence_timeout,
    "a timed-out visit keeps its focus": lapse_keeps_focus,
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_model_catches_a_broken_engine(name: str, rules: Rules,
                                           cases: list[tuple[list[Event], Expected]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    engine = MUTANTS[name](monkeypatch)
    found = [d for events, want in cases
             for d in differences(want, *run_engine(rules, events, engine=engine))]
    assert found, f"{name}: the model saw no difference"


def test_the_real_engine_passes_the_same_harness(
        rules: Rules, cases: list[tuple[list[Event], Expected]]) -> None:
    for events, want in cases:
        assert differences(want, *run_engine(rules, events)) == []


def one_less(items: list[Any]) -> Iterator[list[Any]]:
    """The list without its first, middle and last record."""
    for i in sorted({0, len(items) // 2, len(items) - 1}):
        yield items[:i] + items[i + 1:]


def test_the_comparison_sees_one_nudge_or_tag_record_dropped(
        rules: Rules, cases: list[tuple[list[Event], Expected]]) -> None:
    events, want = cases[0]
    nudges, tags, followups = run_engine(rules, events)
    for fewer in one_less(nudges):
        assert any("nudges: 1 missing" in d for d in differences(want, fewer, tags, followups))
    for fewer in one_less(tags):
        assert any("tags: 1 missing" in d for d in differences(want, nudges, fewer, followups))
    for fewer in one_less(followups):
        assert any("follow-ups: 1 missing" in d
                   for d in differences(want, nudges, tags, fewer))
    assert any("nudges: 1 extra" in d
               for d in differences(want, nudges + nudges[:1], tags, followups))


def test_fuzz_rules_file_is_valid(tmp_path: Path) -> None:
    assert load_dir(shows.write_rules(tmp_path)).nudges
