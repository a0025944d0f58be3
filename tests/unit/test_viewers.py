"""The viewer engine as a whole: timelines, determinism under replay, restart, size, speed.

`Show` is the small driver the nudge and tag tests share: one room, one engine, events
placed by their offset in ms from `T0`.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from stream.core.models import (
    AnyEvent,
    BroadcastEnded,
    BroadcastStarted,
    Event,
    FollowUp,
    HostEvent,
    Nudge,
    OrderEvent,
    ProductPinned,
    SegmentStarted,
    StockSet,
    TagChange,
    ViewerEvent,
)
from stream.engine.effects import Effect, Suppressed
from stream.engine.rules import (
    FollowUpRule,
    KeywordRule,
    Limits,
    NudgeRule,
    Rules,
    TagFile,
    load_dir,
)
from stream.engine.state import decode_state
from stream.engine.timeline import Product, RoomTimeline
from stream.engine.viewers import ViewerEngine
from stream.engine.watermark import Watermarks
from stream.local import showplan

S = 1000
MIN = 60 * S
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_767_268_800_000  # 2026-01-01 12:00 UTC: 20:00 in Shanghai, an evening show


# --- builders shared with test_nudges.py and test_tags.py ----------------------------------

def rule(rule_id: str, kind: str = "dwell", **fields: Any) -> dict[str, Any]:
    """A nudge rule as it would sit in nudges.toml; trigger fields go in `trigger`."""
    trigger: dict[str, Any] = {"kind": kind, **fields.pop("trigger", {})}
    if kind in ("dwell", "cart_unpaid"):
        trigger.setdefault("seconds", 180 if kind == "dwell" else 300)
    return {"id": rule_id, "message": f"{rule_id}: 【{{product_name}}】¥{{price}} 剩{{remaining}}",
            "trigger": trigger, **fields}


FOLLOWUPS = (FollowUpRule(segment="ordered", action="invite", after_s=0),
             FollowUpRule(segment="cart_unpaid", action="coupon", after_s=86400),
             FollowUpRule(segment="watched_only", action="trial", after_s=259200))
TAGS = TagFile(keyword=[
    KeywordRule(id="child", tag="household", value="young_child", phrases=["宝宝能吃吗", "辅食"]),
    KeywordRule(id="small", tag="household", value="small", phrases=["小包装"]),
])


def make_rules(*nudges: dict[str, Any], per_hour: int = 3, tags: TagFile = TAGS) -> Rules:
    return Rules(nudges=tuple(msgspec.convert(n, NudgeRule) for n in nudges),
                 limits=Limits(per_viewer_per_hour=per_hour), tags=tags, followups=FOLLOWUPS)


DWELL = rule("dwell-3min", priority=10)
_convert = msgspec.convert


# The hand-written shows send no heartbeats: their viewers stay until they leave.
NO_TIMEOUT = 10 * DAY


class Show:
    """One room, one engine; `at` is ms after T0. Collects every effect in `out`."""

    def __init__(self, rules: Rules | None = None, *, grace_ms: int = 0,
                 presence_timeout_ms: int = NO_TIMEOUT, hold_inputs: bool = False) -> None:
        self.room = RoomTimeline(room_id="r1", started_at=T0, products={
            "rice": Product("有机胚芽米", 59.9), "oil": Product("花生油", 89.0)})
        # A hand-written show times each event to the ms: by default no input holds the
        # timers (idle_ms=0), so a test's times are exact. The holds have their own tests
        # (test_watermark.py) and run in the simulated and reference-model shows.
        self.engine = ViewerEngine(rules or make_rules(DWELL), grace_ms=grace_ms,
                                   presence_timeout_ms=presence_timeout_ms,
                                   watermarks=None if hold_inputs else Watermarks(idle_ms=0))
        self.out: list[Effect] = []
        self._n = 0

    def event(self, type_: str, at: int, viewer: str = "v1", **fields: Any) -> ViewerEvent:
        self._n += 1
        raw = {"type": type_, "event_id": f"e{self._n}", "room_id": self.room.room_id,
               "ts": T0 + at, "viewer_id": viewer, **fields}
        event = _convert(raw, AnyEvent)
        assert isinstance(event, ViewerEvent)
        return event

    def send(self, type_: str, at: int, viewer: str = "v1", **fields: Any) -> list[Effect]:
        effects = self.engine.apply(self.event(type_, at, viewer, **fields), self.room)
        self.out += effects
        return effects

    def join(self, at: int, viewer: str = "v1", **fields: Any) -> list[Effect]:
        return self.send("viewer.joined", at, viewer, **{"source": "douyin", **fields})

    def place(self, at: int, *skus: str, viewer: str = "v1", order: str = "o1") -> list[Effect]:
        items = [{"sku": sku, "qty": 1, "price": 1.0} for sku in skus]
        return self.send("order.placed", at, viewer, order_id=order, items=items)

    def advance(self, at: int) -> list[Effect]:
        effects = self.engine.advance(T0 + at, {self.room.room_id: self.room})
        self.out += effects
        return effects

    def end(self, at: int) -> list[Effect]:
        self.room.ended_at = T0 + at
        return self.advance(at)

    def nudges(self) -> list[Nudge]:
        return [e for e in self.out if isinstance(e, Nudge)]

    def suppressed(self) -> list[tuple[str, str]]:
        return [(e.rule_id, e.reason) for e in self.out if isinstance(e, Suppressed)]

    def tag_ops(self, tag: str | None = None) -> list[tuple[str, str, str]]:
        return [(e.op, e.tag, e.value) for e in self.out
                if isinstance(e, TagChange) and (tag is None or e.tag == tag)]

    def followups(self) -> list[FollowUp]:
        return [e for e in self.out if isinstance(e, FollowUp)]


# --- the room timeline -------------------------------------------------------------------

def _host(cls: type[HostEvent], ts: int, **fields: Any) -> HostEvent:
    return cls(event_id=f"h{ts}-{cls.__name__}", room_id="r1", ts=ts, **fields)


def test_room_timeline_answers_as_of_a_time_whatever_the_arrival_order() -> None:
    room = RoomTimeline(room_id="r1")
    assert room.broadcast_id == "r1@0" and room.segment_at(T0) is None
    for event in [_host(SegmentStarted, T0 + 10 * MIN, segment="promo", sku="rice"),
                  _host(BroadcastStarted, T0),
                  _host(SegmentStarted, T0, segment="intro"),
                  _host(ProductPinned, T0 + 5 * MIN, sku="oil"),
                  _host(StockSet, T0, sku="rice", qty=5, name="米", price=9.9),
                  _host(StockSet, T0 + 1, sku="rice", qty=50)]:
        room.observe(event)
    assert room.broadcast_id == f"r1@{T0}"
    assert room.segment_at(T0 - 1) is None
    assert room.segment_at(T0) == ("intro", None)
    assert room.segment_at(T0 + 10 * MIN) == ("promo", "rice")
    assert room.pinned_at(T0 + 5 * MIN - 1) is None
    assert room.pinned_at(T0 + 5 * MIN) == "oil"
    assert room.products["rice"] == Product("米", 9.9)  # a restock keeps name and price
    room.observe(_host(BroadcastStarted, T0 + 1))  # a double click on "start": same show
    assert room.started_at == T0
    room.observe(_host(BroadcastEnded, T0 + HOUR))
    room.observe(_host(BroadcastStarted, T0 + DAY))  # the room goes live again next day
    assert (room.started_at, room.ended_at, room.segments) == (T0 + DAY, None, [])


# --- time -------------------------------------------------------------------------------

def test_an_idle_room_fires_on_advance_with_the_due_time_as_ts() -> None:
    show = Show()
    show.join(0)
    show.send("product.viewed", 10 * S, sku="rice")
    assert show.advance(10 * S + 3 * MIN - 1) == []
    [nudge] = show.advance(10 * S + 3 * MIN + 5 * S)
    assert nudge.ts == T0 + 10 * S + 3 * MIN
    assert show.advance(HOUR) == []  # once


def test_a_later_event_fires_what_is_due_before_it_first() -> None:
    show = Show()
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    effects = show.send("interaction.like", 3 * MIN + 1)
    assert isinstance(effects[0], Nudge) and effects[0].ts == T0 + 3 * MIN
    assert isinstance(effects[1], TagChange)  # the like's own tag comes after the nudge


def test_advance_never_depends_on_how_often_it_is_called() -> None:
    def run(ticks: list[int]) -> list[Effect]:
        show = Show(make_rules(DWELL, rule("cart", "cart_unpaid")))
        show.join(0)
        show.send("product.viewed", 1 * S, sku="rice")
        show.send("cart.added", 2 * S, sku="oil", qty=1)
        for t in ticks:
            show.advance(t)
        show.send("viewer.heartbeat", 20 * MIN)
        return show.out

    assert run([]) == run([5 * MIN]) == run(list(range(3 * S, 20 * MIN, S)))


# --- replay at another speed gives the same effects ------------------------------------------

def sim_events(viewers: int, duration_s: float, speed: float, seed: int) -> list[Event]:
    plan = showplan.plan_for(viewers=viewers, duration_s=duration_s, speed=speed, seed=seed,
                              now_ms=T0 + 4 * HOUR)
    return [e for _, e in showplan.broadcast(plan)]


def replay(events: list[Event], schedule: str, *, rules: Rules, grace_ms: int = 0,
           engine: ViewerEngine | None = None, room: RoomTimeline | None = None,
           seed: int = 0) -> list[Effect]:
    """Feed the show like a worker would; `schedule` says when `advance` is called.

    realtime: the once-a-second idle tick in event time, plus just before every event.
    batch100: after every 100 events, just below the next event's ts (a fast replay).
    never:    only the events' own catch-up, and the final advance.
    jitter:   after random batches, up to grace_ms/4 past the newest ts (a worker's clock).

    With `jitter` an event may arrive up to 3/4 grace_ms behind the newest ts seen.
    """
    if engine is None:  # not `or`: an engine holding no viewers yet is falsy (__len__)
        engine = ViewerEngine(rules, grace_ms=grace_ms)
    grace_ms = engine.grace_ms
    room = room or RoomTimeline(room_id=events[0].room_id)
    rooms = {room.room_id: room}
    rng = random.Random(seed)
    out: list[Effect] = []
    for i, event in enumerate(events):
        if isinstance(event, HostEvent):
            room.observe(event)
        else:
            assert isinstance(event, ViewerEvent)
            out += engine.apply(event, room)
        nxt = events[i + 1].ts if i + 1 < len(events) else event.ts + HOUR
        if schedule == "realtime":
            tick = event.ts - event.ts % S + S
            while tick < nxt:
                out += engine.advance(tick, rooms)
                tick += S
            out += engine.advance(nxt - 1, rooms)
        elif schedule == "batch100" and i % 100 == 99:
            out += engine.advance(nxt - 1, rooms)
        elif schedule == "jitter" and rng.random() < 0.1:
            newest = max(e.ts for e in events[max(0, i - 50):i + 1])
            out += engine.advance(newest + rng.randrange(grace_ms // 4), rooms)
    out += engine.advance(events[-1].ts + 10 * DAY, rooms)
    return out


def by_viewer(effects: list[Effect]) -> dict[tuple[str, str], list[Effect]]:
    """Each viewer's effects of each kind (nudges, tag records, ...) in the order decided."""
    out: dict[tuple[str, str], list[Effect]] = {}
    for e in effects:
        out.setdefault((e.viewer_id, type(e).__name__), []).append(e)
    return out


def canonical(effects: list[Effect]) -> list[bytes]:
    """Effects as a sorted multiset, for runs whose interleaving may differ."""
    return sorted(type(e).__name__.encode() + msgspec.json.encode(e) for e in effects)


@pytest.fixture(scope="module")
def small_show() -> list[Event]:
    return sim_events(300, 30, 40, seed=7)


@pytest.fixture(scope="module")
def shipped_rules() -> Rules:
    return load_dir(Path(__file__).resolve().parents[2] / "rules")


def test_replay_at_1x_and_100x_gives_identical_effects(small_show: list[Event],
                                                        shipped_rules: Rules) -> None:
    realtime = replay(small_show, "realtime", rules=shipped_rules)
    assert sum(isinstance(e, Nudge) for e in realtime) > 10
    # Not just the same set: each viewer's effects of a kind in the same sequence. (The
    # interleaving may differ: a quiet room's clock lets a timer out before the event that
    # would have moved the inputs' watermark past it; stream/engine/watermark.py.)
    for schedule in ("batch100", "never"):
        other = replay(small_show, schedule, rules=shipped_rules)
        assert canonical(other) == canonical(realtime), schedule
        assert by_viewer(other) == by_viewer(realtime), schedule


def test_grace_absorbs_late_events_without_changing_any_result(small_show: list[Event],
                                                                shipped_rules: Rules) -> None:
    """Orders from the commerce backend land up to 1.5 s behind the platform's events."""
    in_order = replay(small_show, "never", rules=shipped_rules)
    rng = random.Random(1)
    arrival = sorted(enumerate(small_show), key=lambda ie: (
        ie[1].ts + (rng.randrange(1500) if isinstance(ie[1], OrderEvent) else 0), ie[0]))
    late = [e for _, e in arrival]
    assert late != small_show
    for seed in range(3):
        engine = ViewerEngine(shipped_rules, grace_ms=2000)
        jittered = replay(late, "jitter", rules=shipped_rules, engine=engine, seed=seed)
        timed = (Nudge, Suppressed, FollowUp)
        assert canonical([e for e in jittered if isinstance(e, timed)]) == \
            canonical([e for e in in_order if isinstance(e, timed)])


def test_grace_with_events_in_order_changes_only_when_effects_are_emitted(
        small_show: list[Event], shipped_rules: Rules) -> None:
    in_order = replay(small_show, "realtime", rules=shipped_rules)
    graced = replay(small_show, "jitter", rules=shipped_rules, grace_ms=1000)
    assert canonical(graced) == canonical(in_order)


# --- restart ----------------------------------------------------------------------------------

def test_restart_from_exported_state_continues_exactly(small_show: list[Event],
                                                       shipped_rules: Rules) -> None:
    whole = replay(small_show, "batch100", rules=shipped_rules)
    for cut in (len(small_show) // 4, len(small_show) // 2, 3 * len(small_show) // 4):
        room = RoomTimeline(room_id=small_show[0].room_id)
        first = ViewerEngine(shipped_rules)
        out: list[Effect] = []
        saved: dict[tuple[str, str], bytes] = {}
        for start in range(0, cut, 500):  # the worker persists after each batch
            chunk = small_show[start:min(start + 500, cut)]
            out += _feed(first, chunk, room, next_ts=small_show[start + len(chunk)].ts)
            saved.update(first.export_dirty())
        second = ViewerEngine(shipped_rules)
        second.restore(saved)
        assert len(second) == len(first)
        out += _feed(second, small_show[cut:], room, next_ts=small_show[-1].ts + 10 * DAY)
        out += second.advance(small_show[-1].ts + 10 * DAY, {room.room_id: room})
        # The same effects, each viewer's of a kind in the same sequence. The inputs'
        # watermark is not saved: the restored engine holds no timer until it hears each
        # input again, so a nudge may come out a few events earlier than in one run.
        assert canonical(out) == canonical(whole), f"cut at {cut}"
        assert by_viewer(out) == by_viewer(whole), f"cut at {cut}"


def _feed(engine: ViewerEngine, events: list[Event], room: RoomTimeline, *,
          next_ts: int) -> list[Effect]:
    """As `replay(..., "batch100")` over a slice whose successor has ts `next_ts`."""
    out: list[Effect] = []
    rooms = {room.room_id: room}
    for i, event in enumerate(events):
        if isinstance(event, HostEvent):
            room.observe(event)
        else:
            assert isinstance(event, ViewerEvent)
            out += engine.apply(event, room)
        if _index(event) % 100 == 99:
            nxt = events[i + 1].ts if i + 1 < len(events) else next_ts
            out += engine.advance(nxt - 1, rooms)
    return out


def _index(event: Event) -> int:
    return int(event.event_id.rsplit("-", 1)[1])  # the simulator's sequence number


def test_restore_before_the_room_is_seen_again_defers_its_timers() -> None:
    show = Show()
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    blobs = show.engine.export_dirty()
    assert show.engine.export_dirty() == {}  # nothing changed since
    fresh = ViewerEngine(show.engine.rules, presence_timeout_ms=NO_TIMEOUT)
    fresh.restore(blobs)
    assert fresh.advance(T0 + HOUR, {}) == []  # no timeline for r1 yet: wait for it
    [nudge] = fresh.advance(T0 + HOUR, {"r1": show.room})
    assert nudge.ts == T0 + 3 * MIN and nudge.message.startswith("dwell-3min: 【有机胚芽米】")


# --- state size --------------------------------------------------------------------------------

def test_a_busy_viewer_stays_under_a_kilobyte() -> None:
    rules = make_rules(DWELL, rule("cart", "cart_unpaid"),
                       rule("likes", "event_count", cap_per_broadcast=100,
                            trigger={"event": "interaction.like", "count": 50,
                                     "window_s": 3600}),
                       per_hour=100)
    show = Show(rules)
    show.join(0, source="leader_share", leader_id="leader-wang", region="杭州",
              tz="America/Los_Angeles", returning=True)
    at = 0
    for n in range(40):
        at += 20 * S
        show.send("viewer.heartbeat", at)
        show.send("interaction.like", at + 1, count=3)
        show.send("product.viewed", at + 2, sku=("rice", "oil")[n % 2])
        show.send("interaction.comment", at + 3, text="宝宝能吃吗？有小包装吗")
    for n in range(4):
        show.send("cart.added", at + n, sku=f"sku-{n}", qty=1)
        show.place(at + 10 + n, f"sku-{n}", "rice", order=f"order-{n:04d}")
    show.send("order.paid", at + 20, order_id="order-0000")
    show.send("order.payment_failed", at + 21, order_id="order-0001", reason="card_declined")
    show.send("interaction.share", at + 22)
    show.send("fan.joined", at + 23)
    show.send("viewer.left", at + 24)
    show.send("viewer.joined", at + 25, source="wecom_group")
    size = show.engine.state_bytes("r1", "v1")
    assert len(show.engine.tags_of("r1", "v1")) >= 8
    assert size <= 1024, size
    quiet = Show()
    quiet.join(0)
    quiet.send("viewer.heartbeat", 30 * S)
    assert quiet.engine.state_bytes("r1", "v1") <= 160


# --- rules change, the room goes live again -------------------------------------------------

def test_hot_reload_keeps_state_and_judges_timers_by_the_new_rules() -> None:
    show = Show(make_rules(DWELL, rule("cart", "cart_unpaid")))
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.send("cart.added", 0, sku="oil", qty=1)
    show.engine.rules = make_rules(rule("dwell-3min", enabled=False),
                                   rule("cart", "cart_unpaid", channel="live_banner"))
    show.advance(HOUR)
    assert [(n.rule_id, n.channel) for n in show.nudges()] == [("cart", "live_banner")]
    assert show.engine.tags_of("r1", "v1")["source"] == ["public"]


def test_a_new_broadcast_in_the_same_room_starts_viewers_afresh() -> None:
    show = Show(make_rules(DWELL))
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.advance(4 * MIN)
    show.end(HOUR)
    show.room = RoomTimeline(room_id="r1", started_at=T0 + DAY, products=show.room.products)
    removed = show.join(DAY, tz="Asia/Tokyo")
    assert ("remove", "source", "public") in [(e.op, e.tag, e.value) for e in removed
                                              if isinstance(e, TagChange)]
    show.send("product.viewed", DAY, sku="rice")
    show.advance(DAY + 4 * MIN)
    assert len(show.nudges()) == 2  # the cap is per broadcast
    show.end(DAY + HOUR)
    assert len(show.followups()) == 2


def test_viewers_of_many_rooms_and_forget() -> None:
    engine = ViewerEngine(make_rules(DWELL))
    rooms = {r: RoomTimeline(room_id=r, started_at=T0) for r in ("a", "b")}
    for r, room in rooms.items():
        for v in range(3):
            engine.apply(_convert({"type": "viewer.joined", "event_id": f"{r}{v}",
                                   "room_id": r, "ts": T0, "viewer_id": f"v{v}",
                                   "source": "douyin"}, AnyEvent), room)
    assert len(engine) == 6
    assert engine.forget("a") == 3 and len(engine) == 3
    assert set(engine.export_dirty()) == {("b", "v0"), ("b", "v1"), ("b", "v2")}


# --- the simulator's show ----------------------------------------------------------------

def test_the_simulated_broadcast_end_to_end(shipped_rules: Rules) -> None:
    events = sim_events(2000, 60, 60, seed=3)
    room = RoomTimeline(room_id=events[0].room_id)
    for event in events:
        if isinstance(event, HostEvent):
            room.observe(event)  # the whole timeline up front: timers judge it as of T
    viewer_events = [e for e in events if isinstance(e, ViewerEvent)]
    assert room.ended_at is not None
    rooms = {room.room_id: room}
    # Its speed (> 50k events/s) is measured by bench/claims.py, not asserted here.
    engine = ViewerEngine(shipped_rules)
    out: list[Effect] = []
    for i, event in enumerate(viewer_events):
        out += engine.apply(event, room)
        if i % 200 == 199:  # a worker's batch
            out += engine.advance(event.ts, rooms)
    out += engine.advance(room.ended_at + DAY, rooms)

    nudges = [e for e in out if isinstance(e, Nudge)]
    assert Counter(n.variant for n in nudges).keys() == {"treatment", "holdout"}
    assert all("{product_name}" not in n.message for n in nudges)
    tags = {(e.tag, e.value if e.tag in ("source", "drop_off", "visitor") else "*")
            for e in out if isinstance(e, TagChange) and e.op == "add"}
    expected = {("watch_depth", "*"), ("interaction", "*"), ("conversion_node", "*"),
                ("drop_off", "cart_unpaid"), ("drop_off", "payment_failed"),
                ("household", "*"), ("interest", "*"), ("high_potential", "*"),
                ("source", "private"), ("source", "public"), ("leader", "*"),
                ("visitor", "new"), ("visitor", "returning")}
    assert expected <= tags
    interactions = {e.value for e in out if isinstance(e, TagChange) and e.tag == "interaction"}
    assert interactions == {"liked", "commented", "shared", "cart_clicked", "fan_club"}
    followups = [e for e in out if isinstance(e, FollowUp)]
    assert sorted(f.viewer_id for f in followups) == sorted(
        {e.viewer_id for e in viewer_events if not isinstance(e, OrderEvent)})
    assert {f.segment for f in followups} == {"ordered", "cart_unpaid", "watched_only"}
    sizes = [engine.state_bytes(room.room_id, f.viewer_id) for f in followups]
    assert max(sizes) <= 1024 and sum(sizes) / len(sizes) < 300


# --- the presence timeout ------------------------------------------------------------------

def test_a_silent_viewer_has_left_when_the_timeout_passes() -> None:
    """Dwell waits 3 minutes; heartbeats every 30 s keep the viewer in, silence does not."""
    beating, silent = Show(presence_timeout_ms=MIN), Show(presence_timeout_ms=MIN)
    for show in (beating, silent):
        show.join(0)
        show.send("product.viewed", 1, sku="rice")
    for k in range(1, 10):
        beating.send("viewer.heartbeat", k * 30 * S)
    silent.send("viewer.heartbeat", 4 * MIN)  # back after 4 minutes: a new visit
    for show in (beating, silent):
        show.advance(HOUR)
    assert [n.ts for n in beating.nudges()] == [T0 + 1 + 3 * MIN]
    assert silent.nudges() == [] and silent.suppressed() == [("dwell-3min", "exit:left")]
    state = decode_state(silent.engine.export_dirty()["r1", "v1"])
    assert (state.visits, state.watched, state.joined) == (2, 1, T0 + 4 * MIN)


def test_online_until_the_timeout_passes_the_last_event() -> None:
    """A timer due within the timeout of the last event finds the viewer in the room,
    whatever comes later; one due after it finds them gone."""
    rules = make_rules(rule("dwell-50s", trigger={"seconds": 50}),
                       rule("dwell-70s", trigger={"seconds": 70}))
    show = Show(rules, presence_timeout_ms=MIN)
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.send("viewer.heartbeat", 5 * MIN)
    show.advance(HOUR)
    assert [n.rule_id for n in show.nudges()] == ["dwell-50s"]
    assert show.suppressed() == [("dwell-70s", "exit:left")]


def test_a_room_keeps_its_broadcasts_and_books_every_event_to_one() -> None:
    room = RoomTimeline(room_id="r1")
    assert room.book_at(T0) == 0 and room.broadcasts == []  # warm-up: the first show's
    room.observe(_host(BroadcastStarted, T0))
    room.observe(_host(BroadcastStarted, T0 + 1))  # a double click: the same show
    room.observe(_host(BroadcastEnded, T0 + HOUR))
    room.observe(_host(BroadcastStarted, T0 + DAY, broadcast_id="evening-2"))
    assert [(b.broadcast_id, b.started_at, b.ended_at) for b in room.broadcasts] == [
        (f"r1@{T0}", T0, T0 + HOUR), ("evening-2", T0 + DAY, None)]
    assert room.broadcast_id == "evening-2" and room.current_book() == 1
    assert [room.book_at(T0 + t) for t in (-MIN, 0, HOUR, HOUR + 1, DAY - MIN, DAY + HOUR)] \
        == [0, 0, 0, 1, 1, 1]  # after an end and before the next start: the next show's
    room.observe(_host(BroadcastEnded, T0 + DAY + 2 * HOUR))
    assert room.book_at(T0 + HOUR) == 0 and room.book_at(T0 + DAY + 2 * HOUR + 1) == 2
    assert (room.book_of("evening-2"), room.book_of("nope")) == (1, None)
