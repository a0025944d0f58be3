"""Nudge decisions: golden tests per rule kind, exits, caps, priority, holdout, quiet hours."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from test_viewers import DWELL, HOUR, MIN, T0, S, Show, make_rules, rule

from stream.core.models import Nudge
from stream.engine.effects import Suppressed
from stream.engine.nudges import (
    CompiledRule,
    NudgePlan,
    cap_reason,
    exit_holds,
    format_price,
    holdout_variant,
    in_quiet_hours,
    local_minutes,
    render,
)
from stream.engine.rules import Exit
from stream.engine.timeline import Product

DUE = 3 * MIN  # the 3-minute popup of seed 000, viewed at 0


def dwell_show(*, grace_ms: int = 0) -> Show:
    show = Show(grace_ms=grace_ms)
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    return show


# --- dwell --------------------------------------------------------------------------------

def test_dwell_fires_once_at_the_due_time_with_the_message_filled() -> None:
    show = dwell_show()
    show.advance(HOUR)
    assert show.nudges() == [Nudge(
        viewer_id="v1", room_id="r1", rule_id="dwell-3min", sku="rice",
        message="dwell-3min: 【有机胚芽米】¥59.9 剩{remaining}", variant="treatment",
        channel="live_popup", ts=T0 + DUE)]


@pytest.mark.parametrize("fire_by", ["advance", "next event"])
def test_exit_at_the_last_second(fire_by: str) -> None:
    """An order at the due ms cancels the popup; one a ms later is too late."""
    at_due = dwell_show()
    at_due.place(DUE, "rice")
    if fire_by == "advance":
        at_due.advance(DUE)
    else:
        at_due.send("viewer.heartbeat", DUE + 1)
    assert at_due.nudges() == []
    assert at_due.suppressed() == [("dwell-3min", "exit:ordered")]

    after = dwell_show()
    effects = after.place(DUE + 1, "rice")
    assert isinstance(effects[0], Nudge) and effects[0].ts == T0 + DUE
    assert after.suppressed() == []


def test_dwell_restarts_on_another_product_and_keeps_its_start_on_the_same_one() -> None:
    same = dwell_show()
    same.send("product.viewed", 2 * MIN, sku="rice")  # re-opened: still since 0
    same.advance(HOUR)
    assert [n.ts for n in same.nudges()] == [T0 + DUE]

    switched = dwell_show()
    switched.send("product.viewed", 1 * MIN, sku="oil")
    switched.send("product.viewed", 2 * MIN, sku="rice")  # rice again: a fresh 3 minutes
    switched.advance(HOUR)
    assert [(n.sku, n.ts) for n in switched.nudges()] == [("rice", T0 + 2 * MIN + DUE)]
    assert switched.suppressed() == []  # disarmed timers leave no trace


@pytest.mark.parametrize(("left_at", "fires"), [(DUE - 1, False), (DUE, False),
                                               (DUE + 1, True)])
def test_leaving_disarms_a_dwell_due_at_or_after_the_leave(left_at: int, fires: bool) -> None:
    show = dwell_show()
    show.send("viewer.left", left_at)
    show.advance(HOUR)
    assert bool(show.nudges()) is fires


def test_seed_002_ordered_viewers_get_no_reminder_for_that_product() -> None:
    """用户明明已经下单了，还在推送催单消息: the order is the termination condition."""
    show = Show()
    show.join(0)
    show.place(30 * S, "rice")
    show.send("product.viewed", MIN, sku="rice")
    show.advance(HOUR)
    assert show.nudges() == [] and show.suppressed() == [("dwell-3min", "exit:ordered")]

    other = Show()
    other.join(0)
    other.place(30 * S, "rice")
    other.send("product.viewed", MIN, sku="oil")  # ordered rice, hesitating on oil
    other.advance(HOUR)
    assert [n.sku for n in other.nudges()] == ["oil"]


def test_a_late_order_inside_grace_still_cancels() -> None:
    """The commerce backend's order.placed lands after the platform's later heartbeat."""
    for grace_ms, nudged in ((0, True), (2000, False)):
        show = dwell_show(grace_ms=grace_ms)
        show.send("viewer.heartbeat", DUE + 800)
        show.place(DUE - 500, "rice")  # placed before the due time, delivered late
        show.advance(DUE + 800)
        assert bool(show.nudges()) is nudged, grace_ms
        show.advance(DUE + 2800)
        assert bool(show.nudges()) is nudged, grace_ms


# --- cart unpaid --------------------------------------------------------------------------

CART = rule("cart-5min", "cart_unpaid", priority=20)


def cart_show(*rules: dict[str, Any]) -> Show:
    show = Show(make_rules(*(rules or (CART,))))
    show.join(0)
    show.send("cart.added", 0, sku="oil", qty=1)
    return show


def test_cart_unpaid_reminds_once_with_price_and_leaves_remaining_to_the_sender() -> None:
    show = cart_show()
    show.advance(HOUR)
    [nudge] = show.nudges()
    assert (nudge.sku, nudge.ts, nudge.message) == (
        "oil", T0 + 5 * MIN, "cart-5min: 【花生油】¥89 剩{remaining}")


def test_cart_unpaid_stops_when_paid_or_cancelled_not_when_merely_placed() -> None:
    placed = cart_show()
    placed.place(MIN, "oil")  # placed and unpaid: exactly who the reminder is for
    placed.advance(HOUR)
    assert [n.ts for n in placed.nudges()] == [T0 + 5 * MIN]  # from the cart, not the order

    for outcome in ("order.paid", "order.cancelled"):
        show = cart_show()
        show.place(MIN, "oil")
        show.send(outcome, 2 * MIN, order_id="o1")
        show.advance(HOUR)
        assert show.nudges() == [] and show.suppressed() == [], outcome

    paid_late = cart_show()
    paid_late.place(MIN, "oil")
    paid_late.send("order.paid", 5 * MIN + 1, order_id="o1")
    assert len(paid_late.nudges()) == 1


def test_cart_unpaid_counts_from_the_first_unpaid_moment_in_any_arrival_order() -> None:
    show = Show(make_rules(CART))
    show.join(0)
    show.send("cart.added", 10 * S, sku="oil", qty=1)
    show.place(5 * S, "oil")  # the order (earlier ts) arrives after the cart event
    show.advance(HOUR)
    assert [n.ts for n in show.nudges()] == [T0 + 5 * S + 5 * MIN]


def test_cart_unpaid_exits_when_the_viewer_left() -> None:
    show = cart_show()
    show.send("viewer.left", MIN)
    show.advance(HOUR)
    assert show.suppressed() == [("cart-5min", "exit:left")]


# --- event count --------------------------------------------------------------------------

LIKES = rule("likes", "event_count", cap_per_broadcast=5,
             trigger={"event": "interaction.like", "count": 3, "window_s": 60})


def test_event_count_fires_at_the_count_th_event_inside_the_window() -> None:
    show = Show(make_rules(LIKES))
    show.join(0)
    show.send("product.viewed", 0, sku="oil")
    for at in (0, 30 * S, 60 * S - 1):
        show.send("interaction.like", at)
    show.advance(60 * S - 1)
    assert [(n.sku, n.ts) for n in show.nudges()] == [("oil", T0 + 60 * S - 1)]
    for at in (2 * MIN, 2 * MIN + 30 * S, 3 * MIN + 1):  # the third falls out of the window
        show.send("interaction.like", at)
    show.send("interaction.like", 3 * MIN + 2 * S)  # (30 s, 61 s, 62 s): three in 60 s
    show.advance(HOUR)
    assert [n.ts for n in show.nudges()] == [T0 + 60 * S - 1, T0 + 3 * MIN + 2 * S]


def test_event_count_without_a_product_in_focus_has_no_sku() -> None:
    show = Show(make_rules(rule("one-like", "event_count",
                                trigger={"event": "interaction.like", "count": 1,
                                         "window_s": 1})))
    show.join(0)
    show.send("interaction.like", S)
    show.advance(HOUR)
    [nudge] = show.nudges()
    assert nudge.sku is None and nudge.message.startswith("one-like: 【{product_name}】")


# --- caps, cooldown, the hourly cap, priority ---------------------------------------------

def like_rule(rule_id: str, **fields: Any) -> dict[str, Any]:
    return rule(rule_id, "event_count", trigger={"event": "interaction.like", "count": 1,
                                                 "window_s": 1}, **fields)


def test_cap_per_broadcast_and_cooldown() -> None:
    show = Show(make_rules(like_rule("l", cap_per_broadcast=2, cooldown_s=60), per_hour=10))
    show.join(0)
    for at in (0, 30 * S, 60 * S, 70 * S, 5 * MIN):
        show.send("interaction.like", at)
    show.advance(HOUR)
    assert [n.ts - T0 for n in show.nudges()] == [0, 60 * S]
    assert show.suppressed() == [("l", "cooldown"), ("l", "cap"), ("l", "cap")]


def test_hourly_cap_across_rules_in_a_sliding_event_time_hour() -> None:
    rules = make_rules(like_rule("likes", cap_per_broadcast=10),
                       rule("shares", "event_count", cap_per_broadcast=10,
                            trigger={"event": "interaction.share", "count": 1, "window_s": 1}),
                       per_hour=2)
    show = Show(rules)
    show.join(0)
    show.send("interaction.like", 0)
    show.send("interaction.share", 10 * MIN)
    show.send("interaction.like", 20 * MIN)  # third in the hour
    show.send("interaction.share", HOUR - 1)  # still inside the first fire's hour
    show.send("interaction.like", HOUR + 1)  # the first fire has left the window
    show.advance(2 * HOUR)
    assert [(n.rule_id, n.ts - T0) for n in show.nudges()] == [
        ("likes", 0), ("shares", 10 * MIN), ("likes", HOUR + 1)]
    assert show.suppressed() == [("likes", "hourly_cap"), ("shares", "hourly_cap")]


def test_lowest_priority_number_wins_at_the_same_instant() -> None:
    rules = make_rules(rule("a", priority=50), rule("b", priority=5), rule("c", priority=70))
    show = Show(rules)
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.advance(HOUR)
    assert [n.rule_id for n in show.nudges()] == ["b"]
    assert show.suppressed() == [("a", "lost_priority"), ("c", "lost_priority")]


def test_priority_passes_to_the_next_rule_when_the_best_cannot_fire() -> None:
    rules = make_rules(rule("a", priority=50, exit={"ordered_sku": False}),
                       rule("b", priority=5))
    show = Show(rules)
    show.join(0)
    show.place(0, "rice")  # exits "b", which stops once the product is ordered
    show.send("product.viewed", 0, sku="rice")
    show.advance(HOUR)
    assert [n.rule_id for n in show.nudges()] == ["a"]
    assert show.suppressed() == [("b", "exit:ordered")]


# --- holdout ------------------------------------------------------------------------------

@pytest.mark.parametrize("share", [0.1, 0.5])
def test_holdout_share_within_two_points_over_100k_viewers(share: float) -> None:
    held = sum(holdout_variant(f"v-{i}", "dwell-3min", share) == "holdout"
               for i in range(100_000))
    assert abs(held / 100_000 - share) < 0.02


def test_holdout_is_stable_per_viewer_and_rule() -> None:
    assert holdout_variant("v1", "r", 0.0) == "treatment"
    assert holdout_variant("v1", "r", 1.0) == "holdout"
    picks = {holdout_variant("v1", f"rule-{i}", 0.5) for i in range(50)}
    assert picks == {"treatment", "holdout"}  # independent across rules
    assert all(holdout_variant("v7", "r", 0.3) == holdout_variant("v7", "r", 0.3)
               for _ in range(3))


def test_a_holdout_nudge_is_recorded_and_counts_for_caps() -> None:
    show = Show(make_rules(rule("dwell-3min", holdout=1.0)))
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.send("product.viewed", MIN, sku="oil")
    show.send("product.viewed", 2 * MIN, sku="rice")
    show.advance(HOUR)
    [nudge] = show.nudges()
    assert nudge.variant == "holdout" and nudge.ts == T0 + 2 * MIN + DUE
    assert show.suppressed() == [("dwell-3min", "holdout")]
    show.send("product.viewed", HOUR, sku="oil")
    show.advance(2 * HOUR)
    assert show.suppressed()[-1] == ("dwell-3min", "cap")


# --- quiet hours --------------------------------------------------------------------------

OFF_AIR = rule("offair", "cart_unpaid", channel="wecom", trigger={"seconds": 1800},
               exit={"broadcast_ended": False, "left_room": False},
               quiet_hours={"start": "22:00", "end": "08:00"})


def utc(hour: int, day: int = 1) -> int:
    return int(datetime(2026, 1, day, hour, tzinfo=UTC).timestamp() * 1000) - T0


@pytest.mark.parametrize(("due", "quiet_viewer"), [
    (utc(19), "shanghai"),  # 03:00 in Shanghai (seed 002's 3 a.m.), 11:00 in Los Angeles
    (utc(6, day=2), "la"),  # 14:00 in Shanghai, 22:00 in Los Angeles
])
def test_quiet_hours_follow_each_viewers_time_zone(due: int, quiet_viewer: str) -> None:
    show = Show(make_rules(OFF_AIR))
    show.join(0, viewer="shanghai")  # no tz: Asia/Shanghai by default
    show.join(0, viewer="la", tz="America/Los_Angeles")
    for viewer in ("shanghai", "la"):
        show.send("cart.added", due - 30 * MIN, viewer=viewer, sku="rice", qty=1)
    show.end(HOUR)
    show.advance(due)
    assert [n.viewer_id for n in show.nudges()] == [v for v in ("shanghai", "la")
                                                    if v != quiet_viewer]
    quiet = [e for e in show.out if isinstance(e, Suppressed)]
    assert [(e.viewer_id, e.reason, e.ts) for e in quiet] == [
        (quiet_viewer, "quiet_hours", T0 + due)]


def test_quiet_hours_never_apply_on_air() -> None:
    on_air = dict(OFF_AIR, channel="live_popup")
    show = Show(make_rules(on_air))
    show.join(0)
    show.send("cart.added", utc(19) - 30 * MIN, sku="rice", qty=1)
    show.advance(utc(20))
    assert len(show.nudges()) == 1


def test_broadcast_end_exits_live_nudges_but_not_off_air_ones() -> None:
    show = Show(make_rules(DWELL, dict(OFF_AIR, quiet_hours=None)))
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.send("cart.added", 0, sku="oil", qty=1)
    show.end(DUE)  # ended at the due ms: the popup is for a show that is over
    show.advance(HOUR)
    assert show.suppressed() == [("dwell-3min", "exit:ended")]
    assert [n.rule_id for n in show.nudges()] == ["offair"]


# --- the pure functions -------------------------------------------------------------------

def test_quiet_window_edges_and_wrapping() -> None:
    wrap = (22 * 60, 8 * 60)
    at = {h: utc(h) + T0 for h in range(24)}  # UTC hour h is (h + 8) % 24 in Shanghai
    assert local_minutes(at[14], None) == 22 * 60
    assert local_minutes(at[14], "America/Los_Angeles") == 6 * 60
    assert in_quiet_hours(wrap, at[14], None)  # 22:00 starts it
    assert not in_quiet_hours(wrap, at[14] - 1, None)  # 21:59:59.999
    assert in_quiet_hours(wrap, at[0] - 1, None)  # 07:59
    assert not in_quiet_hours(wrap, at[0], None)  # 08:00 ends it
    assert in_quiet_hours((12 * 60, 13 * 60), at[4], None)  # 12:00, no wrap
    assert not in_quiet_hours((12 * 60, 12 * 60), at[4], None)  # empty window


def test_cap_reason() -> None:
    plan = NudgePlan(make_rules(rule("r", cap_per_broadcast=2, cooldown_s=10)))
    r: CompiledRule = plan.by_id["r"]
    assert cap_reason(r, None, None, 3, T0) is None
    assert cap_reason(r, (1, T0), [T0], 3, T0 + 9999) == "cooldown"
    assert cap_reason(r, (1, T0), [T0], 3, T0 + 10_000) is None
    assert cap_reason(r, (2, T0), [T0], 3, T0 + HOUR) == "cap"
    hour = [T0, T0 + 1, T0 + 2]
    assert cap_reason(r, None, hour, 3, T0 + HOUR - 1) == "hourly_cap"
    assert cap_reason(r, None, hour, 3, T0 + HOUR) is None  # the first has left the hour


def test_exit_holds() -> None:
    default = Exit()
    assert not exit_holds(default, ordered=False, present=True, ended=False)
    assert exit_holds(default, ordered=True, present=True, ended=False)
    assert exit_holds(default, ordered=False, present=False, ended=False)
    assert exit_holds(default, ordered=False, present=True, ended=True)
    none = Exit(ordered_sku=False, left_room=False, broadcast_ended=False)
    assert not exit_holds(none, ordered=True, present=False, ended=True)


def test_render_and_prices() -> None:
    message = "【{product_name}】¥{price}，还剩 {remaining} 件"
    assert render(message, Product("米", 59.9)) == "【米】¥59.9，还剩 {remaining} 件"
    assert render(message, Product("米", None)) == "【米】¥{price}，还剩 {remaining} 件"
    assert render(message, None) == message  # unknown product: the sender may fill it
    assert [format_price(p) for p in (59.9, 15.0, 0.0, 1234567.5, 0.05)] == [
        "59.9", "15", "0", "1234567.5", "0.05"]


def test_plan_skips_disabled_rules_and_quiet_hours_on_air() -> None:
    plan = NudgePlan(make_rules(rule("off", enabled=False), LIKES,
                                dict(OFF_AIR, id="on", channel="live_banner"), OFF_AIR))
    assert set(plan.by_id) == {"likes", "on", "offair"}
    assert [r.id for r in plan.counts["interaction.like"]] == ["likes"]
    assert plan.by_id["on"].quiet is None
    assert plan.by_id["offair"].quiet == (22 * 60, 8 * 60)
    assert plan.by_id["offair"].delay_ms == 1800 * S


# --- stock at fire time -----------------------------------------------------------------

_versions = iter(range(1, 1 << 30))


def stock(show: Show, at: int, available: int, sku: str = "rice") -> None:
    """A stock change made by an event at `at`, applied after every earlier call."""
    show.engine.stock.observe(show.room.room_id, sku, T0 + at, available, next(_versions))


def test_a_nudge_for_a_sold_out_sku_is_suppressed_as_sold_out() -> None:
    """The issue's 还剩 0 件: sold out 4 minutes before, the dwell popup still went out."""
    show = Show()
    stock(show, -MIN, 2)
    for viewer in ("v1", "v2"):
        show.join(0, viewer)
        show.send("product.viewed", 0, viewer, sku="rice")
    stock(show, DUE - 4 * S, 0)  # sold out just before the due time
    show.send("product.viewed", 0, "v3", sku="oil")  # oil's stock is not known: fires
    show.advance(HOUR)
    assert [n.viewer_id for n in show.nudges()] == ["v3"]
    assert show.suppressed() == [("dwell-3min", "sold_out"), ("dwell-3min", "sold_out")]


def test_stock_is_judged_as_of_the_due_time_not_when_the_timer_runs() -> None:
    """A restock a second after the due time does not save the nudge, and a sell-out a
    second after it does not stop it: the same as a replay that knows both points."""
    before, after = dwell_show(), dwell_show()
    stock(before, 0, 0)
    stock(before, DUE + S, 50)
    stock(after, 0, 50)
    stock(after, DUE + S, 0)
    for show in (before, after):
        show.advance(HOUR)
    assert before.nudges() == [] and before.suppressed() == [("dwell-3min", "sold_out")]
    assert len(after.nudges()) == 1 and after.suppressed() == []


def test_sold_out_exit_can_be_switched_off() -> None:
    show = Show(make_rules(rule("dwell-3min", exit={"sold_out": False})))
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    stock(show, 0, 0)
    show.advance(HOUR)
    assert len(show.nudges()) == 1


@pytest.mark.parametrize(("available", "message"), [
    (3, "只剩 {remaining} 件【有机胚芽米】"), (5, "只剩 {remaining} 件【有机胚芽米】"),
    (6, "dwell-3min: 【有机胚芽米】¥59.9 剩{remaining}"),
])
def test_low_stock_sends_the_variant_message(available: int, message: str) -> None:
    low = {"at_most": 5, "message": "只剩 {remaining} 件【{product_name}】"}
    show = Show(make_rules(rule("dwell-3min", low_stock=low)))
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    stock(show, 0, available)
    show.advance(HOUR)
    assert [n.message for n in show.nudges()] == [message]


def test_low_stock_exit_suppresses_with_its_own_reason() -> None:
    rules = make_rules(rule("dwell-3min", low_stock={"at_most": 5, "exit": True}),
                       rule("cart", "cart_unpaid"))
    show = Show(rules)
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    show.send("cart.added", 0, sku="rice", qty=1)
    stock(show, 0, 4)
    show.advance(HOUR)
    assert show.suppressed() == [("dwell-3min", "exit:low_stock")]
    assert [n.rule_id for n in show.nudges()] == ["cart"]  # a rule without the exit still fires


def test_a_sold_out_rule_leaves_the_instant_to_the_next_eligible_rule() -> None:
    rules = make_rules(rule("buy-now", priority=1, trigger={"seconds": 60}),
                       rule("restock-alert", priority=2, trigger={"seconds": 60},
                            exit={"sold_out": False}))
    show = Show(rules)
    show.join(0)
    show.send("product.viewed", 0, sku="rice")
    stock(show, 0, 0)
    show.advance(HOUR)
    assert show.suppressed() == [("buy-now", "sold_out")]
    assert [n.rule_id for n in show.nudges()] == ["restock-alert"]
