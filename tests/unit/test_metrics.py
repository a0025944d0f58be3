"""Pure host-view logic: counters per event, counters to metrics, the review's breakdowns."""

from __future__ import annotations

from collections import Counter

import pytest

from stream.core.counters import MINUTE_MS, count, minute_of
from stream.core.models import (
    CartClicked,
    Event,
    Like,
    OrderPaymentFailed,
    SegmentStarted,
    ViewerJoined,
)
from stream.engine.timeline import RoomTimeline, fold
from stream.hostview.metrics import (
    RoomRaw,
    SkuRow,
    compute,
    segments_of,
)
from stream.hostview.reader import Viewer
from stream.hostview.report import UNCONVERTED, build, render_html, unconverted_reason

T0 = 1_767_225_600_000  # a minute boundary
M0 = minute_of(T0)


def timeline(*segments: tuple[int, str], started: int = T0, ended: int | None = None,
             ) -> RoomTimeline:
    tl = fold(RoomTimeline(room_id="r"), [SegmentStarted(event_id=f"s{ts}", room_id="r", ts=ts,
                                                         segment=name)
                                          for ts, name in segments])
    tl.started_at, tl.ended_at = started, ended
    return tl


def raw(stats: dict[str, float], *, now: int, skus: list[SkuRow] = (),  # type: ignore[assignment]
        nudged: dict[str, str] | None = None, buyers: dict[str, int] | None = None,
        tl: RoomTimeline | None = None, seconds: dict[str, float] | None = None) -> RoomRaw:
    return RoomRaw(room_id="r", now_ms=now, stats=stats, skus=list(skus),
                   timeline=tl or timeline(), seconds=seconds or {}, nudged=nudged or {},
                   buyers=buyers or {})


def counters(event: Event) -> list[tuple[str, int]]:
    into: Counter[str] = Counter()
    count([event], into)
    return list(into.items())


def test_counters_name_minute_and_second() -> None:
    click = CartClicked(event_id="c", room_id="r", viewer_id="v", ts=T0 + 95_500, sku="a")
    assert counters(click) == [(f"m:{M0 + 1}:cart_clicks", 1),
                               (f"s:{T0 // 1000 + 95}:cart_clicks", 1)]
    like = Like(event_id="l", room_id="r", viewer_id="v", ts=T0, count=7)
    assert counters(like) == [("likes", 7), (f"m:{M0}:likes", 7)]
    failed = OrderPaymentFailed(event_id="f", room_id="r", viewer_id="v", ts=T0, order_id="o",
                                reason="x")
    assert counters(failed) == [(f"m:{M0}:payment_failed", 1)]
    join = ViewerJoined(event_id="j", room_id="r", viewer_id="v", ts=T0, source="douyin")
    assert counters(join) == [(f"m:{M0}:joins", 1)]


def test_segments_are_summed_from_seconds_with_the_timeline_known_when_read() -> None:
    s0 = T0 // 1000
    seconds = {f"{s0 - 1}:cart_clicks": 4,  # before the show's first segment: left out
               f"{s0}:cart_clicks": 2, f"{s0 + 89}:orders": 1,
               f"{s0 + 90}:cart_clicks": 3, f"{s0 + 95}:orders": 2, f"{s0 + 95}:paid": 1,
               f"{s0 + 95}:gmv": 59.9, f"{s0 + 200}:cart_clicks": 5}
    early = segments_of(seconds, timeline((T0, "intro")))  # the promo start is not in yet
    assert [(s.segment, s.cart_clicks, s.orders) for s in early] == [("intro", 10, 3)]
    # The promo starts mid-second (T0 + 90.4 s): that whole second is the promo's.
    late = segments_of(seconds, timeline((T0, "intro"), (T0 + 90_400, "promo"),
                                         (T0 + 180_000, "intro")))
    by = {s.segment: s for s in late}
    assert (by["intro"].cart_clicks, by["intro"].orders) == (7, 1)
    assert (by["promo"].cart_clicks, by["promo"].orders, by["promo"].paid) == (3, 2, 1)
    assert by["promo"].gmv == 59.9 and by["promo"].click_to_order == pytest.approx(2 / 3,
                                                                                   abs=1e-4)


def test_totals_rates_and_watch_time() -> None:
    now = T0 + 4 * MINUTE_MS  # 4 minutes into the show
    stats = {
        "viewers": 4, "online": 2, "peak": 3, "ev:viewer.joined": 5,
        # two closed visits of 60 s; two open ones joined at T0 and T0 + 2 min
        "watch_ms": 120_000, "open_join_sum": 2 * T0 + 2 * MINUTE_MS,
        "orders_reserved": 10, "orders_paid": 8, "gmv": 800.0,
        **{f"m:{M0 + i}:orders": 2 for i in range(5)},
        "layer:new:viewers": 3, "layer:returning:viewers": 1, "src:douyin:viewers": 4,
    }
    m = compute(raw(stats, now=now, buyers={"a": T0, "b": T0}))
    t = m.totals
    # open watch: (4 min) + (2 min) = 6 min; plus 2 min closed = 8 min over 4 viewers
    assert t.avg_watch_s == 120.0
    assert (t.buyers, t.conversion_rate, t.gpm) == (2, 0.5, 160_000.0)
    # 10 orders over the 4 minutes since the show started (the window is capped at the start)
    assert m.per_minute.orders == 2.5
    assert [p.orders for p in m.series] == [2, 2, 2, 2, 2]
    assert m.sources == {"douyin": 4}


def test_watch_time_stops_at_the_end_of_the_show() -> None:
    end = T0 + 10 * MINUTE_MS
    stats = {"viewers": 1, "online": 1, "open_join_sum": T0}
    tl = timeline(ended=end)
    assert compute(raw(stats, now=end + 60 * MINUTE_MS, tl=tl)).totals.avg_watch_s == 600.0


def test_sell_out_projection_and_stock_alerts() -> None:
    now = T0 + 11 * MINUTE_MS - 1  # the end of a minute: the window spans 5 whole ones
    recent = {f"m:{minute_of(now) - i}:units:a": 10 for i in range(5)}  # 10 units a minute
    skus = [SkuRow(sku="a", name="米", price=1.0, loaded=100, available=30, reserved=0,
                   sold=70),
            SkuRow(sku="b", name="油", price=1.0, loaded=100, available=5, reserved=0, sold=95),
            SkuRow(sku="c", name="面", price=1.0, loaded=50, available=0, reserved=0, sold=50),
            SkuRow(sku="d", name="盐", price=1.0, loaded=100, available=90, reserved=0,
                   sold=10)]
    m = compute(raw(recent, now=now, skus=skus))
    by = {s.sku: s for s in m.skus}
    assert by["a"].per_minute == pytest.approx(10.0, rel=0.05)
    assert by["a"].sell_out_s == pytest.approx(180, rel=0.05)  # 30 left at 10 a minute
    assert by["d"].sell_out_s is None  # nothing taken lately
    assert by["a"].sell_through == 0.7
    assert {(a.kind, a.sku) for a in m.alerts} == {("low_stock", "b"), ("sold_out", "c")}


def test_payment_failure_spike_alert() -> None:
    now = T0 + 10 * MINUTE_MS
    calm = {f"m:{minute_of(now)}:payment_failed": 1, f"m:{minute_of(now)}:paid": 20}
    assert compute(raw(calm, now=now)).alerts == []
    spike = {f"m:{minute_of(now)}:payment_failed": 6, f"m:{minute_of(now) - 1}:paid": 10}
    [alert] = compute(raw(spike, now=now)).alerts
    assert alert.kind == "payment_failures" and "6 payments failed" in alert.message
    old = {f"m:{minute_of(now) - 5}:payment_failed": 50}  # long past: no alert now
    assert compute(raw(old, now=now)).alerts == []


def test_nudge_conversion_counts_payments_after_the_nudge_only() -> None:
    nudged = {"dwell|a": f"treatment|{T0}", "dwell|b": f"treatment|{T0}",
              "dwell|c": f"holdout|{T0}", "dwell|d": f"holdout|{T0}",
              "cart|a": f"treatment|{T0 + 10}"}
    buyers = {"a": T0 + 5, "c": T0 - 1, "d": T0 + 1}  # c paid before its holdout nudge
    stats = {"nudges:dwell:treatment": 3, "nudges:dwell:holdout": 2,
             "nudges:cart:treatment": 1}
    m = compute(raw(stats, now=T0 + 100, nudged=nudged, buyers=buyers))
    by = {n.rule_id: n for n in m.nudges}
    d = by["dwell"]
    assert (d.fired, d.held_out, d.treatment_viewers, d.treatment_converted) == (3, 2, 2, 1)
    assert (d.holdout_viewers, d.holdout_converted, d.uplift) == (2, 1, 0.0)
    assert by["cart"].treatment_converted == 0  # a paid 5 ms before the cart nudge
    assert by["cart"].uplift is None  # no holdout to compare with


def test_suppressions_per_rule_by_reason_and_the_uplift_interval() -> None:
    # 70 treatment viewers (56 paid after) against 80 held out (48 paid after): Newcombe's
    # first example, interval (0.0524, 0.3339), so the rule is better.
    nudged = {f"dwell|t{i}": f"treatment|{T0}" for i in range(70)}
    nudged |= {f"dwell|h{i}": f"holdout|{T0}" for i in range(80)}
    buyers = {f"t{i}": T0 + 1 for i in range(56)} | {f"h{i}": T0 + 1 for i in range(48)}
    stats = {"nudges:dwell:treatment": 70, "nudges:dwell:holdout": 80,
             "suppressed:dwell:holdout": 80, "suppressed:dwell:sold_out": 4,
             "suppressed:dwell:exit:left": 2, "suppressed:cart:x:cap": 1,
             "suppressed:cart:x:made-up": 3}
    m = compute(raw(stats, now=T0 + 100, nudged=nudged, buyers=buyers))
    by_rule = {n.rule_id: n for n in m.nudges}
    dwell = by_rule["dwell"]
    assert dwell.suppressed == {"holdout": 80, "sold_out": 4, "exit:left": 2}
    assert dwell.uplift_ci == (0.0524, 0.3339) and dwell.verdict == "better"
    # A rule that only ever suppressed still shows; an unknown reason is not a label.
    cart = by_rule["cart:x"]
    assert cart.suppressed == {"cap": 1} and cart.uplift_ci is None
    assert cart.verdict == "not yet clear"
    assert m.totals.nudges_suppressed == 4 + 2 + 1


def viewer(vid: str, *, source: str = "douyin", leader: str = "", region: str = "",
           layer: str = "new", paid: bool = False, spend: float = 0.0, carted: bool = False,
           failed: bool = False) -> Viewer:
    return Viewer(viewer_id=vid, source=source, leader=leader, layer=layer, region=region,
                  watched_ms=60_000, carted=carted, payment_failed=failed,
                  paid_at=T0 if paid else None, spend=spend)


def test_review_partitions_viewers_and_ranks_unconverted() -> None:
    viewers = [
        viewer("a", paid=True, spend=100.0, carted=True, failed=True),  # paid after a failure
        viewer("b", carted=True, failed=True, source="wecom_group"),
        viewer("c", carted=True, layer="returning"),
        viewer("d"),
        viewer("e", source="leader_share", leader="leader-li", region="成都", paid=True,
               spend=50.0),
        viewer("f", source="leader_share", leader="leader-li", region="成都"),
    ]
    assert [unconverted_reason(v) for v in viewers] == [
        None, "payment_failed", "cart_unpaid", "watched_only", None, "watched_only"]
    metrics = compute(raw({"viewers": 6}, now=T0, buyers={"a": T0, "e": T0}))
    r = build(metrics, viewers)
    assert [g.key for g in r.unconverted] == list(UNCONVERTED)
    assert [g.viewers for g in r.unconverted] == [1, 1, 2]
    assert {g.key: (g.viewers, g.buyers, g.gmv) for g in r.sources} == {
        "douyin": (3, 1, 100.0), "wecom_group": (1, 0, 0.0), "leader_share": (2, 1, 50.0)}
    [leader] = r.leaders
    assert (leader.key, leader.region, leader.viewers, leader.conversion) == (
        "leader-li", "成都", 2, 0.5)
    assert sum(g.viewers for g in r.layers) == 6
    page = render_html(r)
    for section in ("sources", "segments", "layers", "unconverted", "leaders"):
        assert f'id="{section}"' in page
    assert "leader-li" in page and "<script" not in page
