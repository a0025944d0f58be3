"""The host's live metrics, pure: which counters an event moves, and counters to metrics.

Counting happens on the once-per-record paths (the ledger's offset fences, the
inventory script's order ids, the presence script's per-viewer event times), always
into the room's Redis hashes, so every worker's share lands in one place. This module
names those counters (`counters`) and turns a snapshot of them (`RoomRaw`, read by
`hostview.reader`) into the metrics a host reads (`compute`). No I/O here.

Counter names in the room's stats hash (besides the pipeline's `events`, `ev:<type>`
and the inventory's `orders_*`, `gmv`):
- `m:<minute>:<name>`: per event-time minute (epoch ms // 60000): joins, leaves, likes,
  comments, cart_clicks, payment_failed (ledger); orders, paid, gmv, units:<sku>
  (inventory); online_d, visits opened minus visits ended in the minute (presence).
- `online`, `peak`, `viewers`, `watch_ms`, `open_join_sum`, `presence_clock`,
  `src:<source>:viewers`,
  `layer:<new|returning|unknown>:viewers` (presence).

And in the room's seconds hash, `<epoch second>:<name>`: cart_clicks (ledger); orders,
paid, gmv (inventory). These are summed per show segment when read (`segments_of`),
with the room's timeline as known then: a segment start that reaches the room log late
(host events travel apart from viewer events) still gets its events. Boundaries are
taken to the second: the second a segment starts in belongs to it.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import msgspec

from stream.core.counters import MINUTE_MS, minute_of
from stream.core.reasons import parse_stat_field
from stream.engine.timeline import RoomTimeline
from stream.hostview.uplift import Verdict, uplift_interval, verdict

# Rates (per minute) and the sell-out projection look at this many trailing minutes.
RATE_WINDOW_MIN = 5
LAYERS = ("new", "returning", "unknown")


# --- the snapshot read from Redis ----------------------------------------------------------


class SkuRow(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    price: float | None
    loaded: int
    available: int
    reserved: int
    sold: int


class RoomRaw(msgspec.Struct, frozen=True, kw_only=True):
    """Everything `compute` needs, as read in one go from the room's keys."""

    room_id: str
    now_ms: int  # the room's event-time clock
    stats: dict[str, float]
    skus: list[SkuRow]
    timeline: RoomTimeline
    seconds: dict[str, float]  # `<epoch second>:<name>` -> count or GMV
    nudged: dict[str, str]  # `rule|viewer` -> `variant|ts`
    buyers: dict[str, int]  # viewer -> first paid ts


# --- the metrics --------------------------------------------------------------------------


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One event-time minute of the show."""

    t: int  # start of the minute, epoch ms
    online: int
    joins: int
    likes: int
    comments: int
    cart_clicks: int
    orders: int
    paid: int
    gmv: float
    payment_failed: int


class SkuMetrics(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    price: float | None
    loaded: int
    sold: int
    reserved: int
    available: int
    sell_through: float  # sold / loaded
    per_minute: float  # units taken (reserved) per minute, trailing window
    sell_out_s: float | None  # at that pace, seconds until nothing is available


class SegmentMetrics(msgspec.Struct, frozen=True, kw_only=True):
    segment: str
    cart_clicks: int
    orders: int
    paid: int
    gmv: float
    click_to_order: float | None  # orders / cart clicks


class NudgeMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One rule: viewers nudged (first fire) per variant, and how many paid afterwards."""

    rule_id: str
    fired: int  # treatment fires, repeats included
    held_out: int  # holdout fires (decided, not shown)
    treatment_viewers: int
    treatment_converted: int
    holdout_viewers: int
    holdout_converted: int
    treatment_rate: float | None
    holdout_rate: float | None
    uplift: float | None  # treatment_rate - holdout_rate
    # Its 95% interval (Newcombe's hybrid score), None until both arms have viewers,
    # and what it says: better, worse or not yet clear.
    uplift_ci: tuple[float, float] | None = None
    verdict: Verdict = "not yet clear"
    # Decided but not shown, by reason (`stream.core.reasons`), holdout included.
    suppressed: dict[str, int] = {}


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # low_stock, sold_out, payment_failures
    message: str
    sku: str | None = None


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    online: int
    peak: int
    viewers: int  # unique
    joins: int  # views (a viewer joining twice counts twice)
    new_viewers: int
    returning_viewers: int
    avg_watch_s: float
    likes: int
    comments: int
    shares: int
    fan_joins: int
    cart_clicks: int
    orders: int  # reserved: placed and accepted by the inventory
    orders_rejected: int
    paid: int
    gmv: float
    buyers: int
    conversion_rate: float  # buyers / unique viewers
    gpm: float  # GMV per 1,000 views
    payment_failed: int
    cancelled: int
    expired: int
    nudges: int
    nudges_suppressed: int


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    """Per minute over the trailing window."""

    joins: float
    likes: float
    comments: float
    cart_clicks: float
    orders: float
    gmv: float


class RoomMetrics(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    broadcast_id: str | None  # None before the room's first broadcast.started
    now_ms: int
    started_at: int | None
    ended_at: int | None
    totals: Totals
    per_minute: Rates
    sources: dict[str, int]  # unique viewers per source
    skus: list[SkuMetrics]
    segments: list[SegmentMetrics]
    nudges: list[NudgeMetrics]
    series: list[Point]
    alerts: list[Alert]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def compute(raw: RoomRaw, *, low_stock_ratio: float = 0.1, low_stock_units: int = 10,
            failure_window_min: int = 2, failure_rate: float = 0.2,
            failure_min: int = 3, max_points: int = 240) -> RoomMetrics:
    """The room's metrics from its counters (pure)."""
    st = raw.stats

    def n(name: str) -> int:
        return int(st.get(name, 0))

    tl = raw.timeline
    now = raw.now_ms if tl.ended_at is None else min(raw.now_ms, tl.ended_at)
    viewers, online = n("viewers"), n("online")
    gmv = float(st.get("gmv", 0.0))
    buyers = len(raw.buyers)
    # Open visits count up to now: sum(now - joined) = online * now - sum(joined).
    open_ms = max(0, online * now - n("open_join_sum")) if online else 0
    joins = n("ev:viewer.joined")
    totals = Totals(
        online=online, peak=n("peak"), viewers=viewers, joins=joins,
        new_viewers=n("layer:new:viewers"), returning_viewers=n("layer:returning:viewers"),
        avg_watch_s=round((n("watch_ms") + open_ms) / viewers / 1000, 1) if viewers else 0.0,
        likes=n("likes"), comments=n("ev:interaction.comment"),
        shares=n("ev:interaction.share"), fan_joins=n("ev:fan.joined"),
        cart_clicks=n("ev:cart.clicked"), orders=n("orders_reserved"),
        orders_rejected=sum(int(v) for k, v in st.items() if k.startswith("orders_rejected:")),
        paid=n("orders_paid"), gmv=round(gmv, 2), buyers=buyers,
        conversion_rate=round(buyers / viewers, 4) if viewers else 0.0,
        gpm=round(gmv / joins * 1000, 2) if joins else 0.0,
        payment_failed=n("ev:order.payment_failed"), cancelled=n("orders_released:cancelled"),
        expired=n("orders_released:expired"), nudges=n("nudges"),
        nudges_suppressed=sum(n for reasons in _suppressed(st).values()
                              for reason, n in reasons.items() if reason != "holdout"),
    )
    series = _series(st, tl.started_at, now, max_points)
    window = _window(tl.started_at, now)
    recent = {minute_of(now) - i for i in range(RATE_WINDOW_MIN)}

    def rate(name: str) -> float:
        total = sum(st.get(f"m:{m}:{name}", 0) for m in recent)
        return round(total / window, 2) if window else 0.0

    skus = [_sku(row, sum(st.get(f"m:{m}:units:{row.sku}", 0) for m in recent), window)
            for row in raw.skus]
    return RoomMetrics(
        room_id=raw.room_id, broadcast_id=tl.broadcast_id if tl.started_at is not None else None,
        now_ms=raw.now_ms, started_at=tl.started_at, ended_at=tl.ended_at,
        totals=totals,
        per_minute=Rates(joins=rate("joins"), likes=rate("likes"), comments=rate("comments"),
                         cart_clicks=rate("cart_clicks"), orders=rate("orders"),
                         gmv=rate("gmv")),
        sources=_prefixed(st, "src:", ":viewers"),
        skus=skus,
        segments=segments_of(raw.seconds, tl),
        nudges=_nudges(st, raw.nudged, raw.buyers),
        series=series,
        alerts=_stock_alerts(skus, low_stock_ratio, low_stock_units)
        + _failure_alerts(st, now, failure_window_min, failure_rate, failure_min),
    )


def _window(started_at: int | None, now: int) -> float:
    """Minutes the trailing rate window covers: RATE_WINDOW_MIN buckets, or fewer at the start."""
    first = (minute_of(now) - RATE_WINDOW_MIN + 1) * MINUTE_MS
    if started_at is not None:
        first = max(first, started_at)
    return max(0.0, (now - first) / MINUTE_MS) or 0.0


def _prefixed(st: dict[str, float], head: str, tail: str) -> dict[str, int]:
    return {k[len(head):-len(tail)]: int(v) for k, v in sorted(st.items())
            if k.startswith(head) and k.endswith(tail)}


def _series(st: dict[str, float], started_at: int | None, now: int,
            max_points: int) -> list[Point]:
    buckets: dict[int, dict[str, float]] = {}
    for k, v in st.items():
        if k.startswith("m:"):
            _, bucket, name = k.split(":", 2)
            buckets.setdefault(int(bucket), {})[name] = v
    if not buckets and started_at is None:
        return []
    last = minute_of(now)
    first = minute_of(started_at) if started_at is not None else min(buckets)
    first = min(first, *buckets) if buckets else first
    first = max(first, last - max_points + 1)
    out: list[Point] = []
    # Online at a minute's end: visits opened minus visits ended up to it, by event time.
    online = int(sum(b.get("online_d", 0) for m, b in buckets.items() if m < first))
    for minute in range(first, last + 1):
        b = buckets.get(minute, {})
        online += int(b.get("online_d", 0))
        out.append(Point(t=minute * MINUTE_MS, online=online, joins=int(b.get("joins", 0)),
                         likes=int(b.get("likes", 0)), comments=int(b.get("comments", 0)),
                         cart_clicks=int(b.get("cart_clicks", 0)),
                         orders=int(b.get("orders", 0)), paid=int(b.get("paid", 0)),
                         gmv=round(float(b.get("gmv", 0.0)), 2),
                         payment_failed=int(b.get("payment_failed", 0))))
    return out


def _sku(row: SkuRow, taken: float, window_min: float) -> SkuMetrics:
    pace = taken / window_min if window_min else 0.0
    eta = None
    if row.available == 0:
        eta = 0.0
    elif pace > 0:
        eta = round(row.available / pace * 60, 1)
    return SkuMetrics(sku=row.sku, name=row.name, price=row.price, loaded=row.loaded,
                      sold=row.sold, reserved=row.reserved, available=row.available,
                      sell_through=round(row.sold / row.loaded, 4) if row.loaded else 0.0,
                      per_minute=round(pace, 2), sell_out_s=eta)


def segments_of(seconds: dict[str, float], timeline: RoomTimeline) -> list[SegmentMetrics]:
    """Per-second counts summed per kind of segment (intro, demo, …) on air in that
    second; seconds before the first segment are left out."""
    starts = [ts // 1000 for ts, _, _ in timeline.segments]
    sums: dict[str, dict[str, float]] = {}
    for field, value in seconds.items():
        second, name = field.split(":", 1)
        i = bisect_right(starts, int(second))
        if i:
            tally = sums.setdefault(timeline.segments[i - 1][1], {})
            tally[name] = tally.get(name, 0) + value
    out = []
    for segment, t in sorted(sums.items()):
        clicks, orders = int(t.get("cart_clicks", 0)), int(t.get("orders", 0))
        ratio = _ratio(orders, clicks)
        out.append(SegmentMetrics(segment=segment, cart_clicks=clicks, orders=orders,
                                  paid=int(t.get("paid", 0)), gmv=round(t.get("gmv", 0.0), 2),
                                  click_to_order=None if ratio is None else round(ratio, 4)))
    return out


def _nudges(st: dict[str, float], nudged: dict[str, str],
            buyers: dict[str, int]) -> list[NudgeMetrics]:
    """Conversion: the viewer paid at or after the rule first nudged them (event time)."""
    seen: dict[tuple[str, str], list[int]] = {}  # (rule, variant) -> [viewers, converted]
    for field, value in nudged.items():
        rule, viewer = field.split("|", 1)
        variant, ts = value.split("|", 1)
        tally = seen.setdefault((rule, variant), [0, 0])
        tally[0] += 1
        paid_at = buyers.get(viewer)
        tally[1] += paid_at is not None and paid_at >= int(ts)
    suppressed = _suppressed(st)
    rules = sorted({r for r, _ in seen} | suppressed.keys()
                   | {k.split(":")[1] for k in st if k.startswith("nudges:")})
    out = []
    for rule in rules:
        tv, tc = seen.get((rule, "treatment"), [0, 0])
        hv, hc = seen.get((rule, "holdout"), [0, 0])
        tr, hr = _ratio(tc, tv), _ratio(hc, hv)
        ci = uplift_interval(tc, tv, hc, hv)
        out.append(NudgeMetrics(
            rule_id=rule, fired=int(st.get(f"nudges:{rule}:treatment", 0)),
            held_out=int(st.get(f"nudges:{rule}:holdout", 0)),
            treatment_viewers=tv, treatment_converted=tc, holdout_viewers=hv,
            holdout_converted=hc,
            treatment_rate=None if tr is None else round(tr, 4),
            holdout_rate=None if hr is None else round(hr, 4),
            uplift=None if tr is None or hr is None else round(tr - hr, 4),
            uplift_ci=None if ci is None else (round(ci[0], 4), round(ci[1], 4)),
            verdict=verdict(ci), suppressed=suppressed.get(rule, {})))
    return out


def _suppressed(st: dict[str, float]) -> dict[str, dict[str, int]]:
    """rule -> reason -> count, from the engagement claim's `suppressed:<rule>:<reason>`."""
    out: dict[str, dict[str, int]] = {}
    for field, value in st.items():
        parsed = parse_stat_field(field)
        if parsed is not None:
            rule, reason = parsed
            out.setdefault(rule, {})[reason] = int(value)
    return out


def _stock_alerts(skus: list[SkuMetrics], ratio: float, units: int) -> list[Alert]:
    out = []
    for s in skus:
        if s.loaded and s.available == 0:
            out.append(Alert(kind="sold_out", sku=s.sku, message=f"{s.name}: sold out"))
        elif s.loaded and s.available <= max(units, math.ceil(s.loaded * ratio)):
            eta = f", sells out in ~{s.sell_out_s / 60:.0f} min" if s.sell_out_s else ""
            out.append(Alert(kind="low_stock", sku=s.sku,
                             message=f"{s.name}: {s.available} of {s.loaded} left{eta}"))
    return out


def _failure_alerts(st: dict[str, float], now: int, window: int, rate: float,
                    minimum: int) -> list[Alert]:
    """Payment failures spiking: at least `minimum` in the last `window` minutes, and at
    least `rate` of the payment outcomes (failed + paid) of those minutes."""
    minutes = [minute_of(now) - i for i in range(window)]
    failed = sum(int(st.get(f"m:{m}:payment_failed", 0)) for m in minutes)
    paid = sum(int(st.get(f"m:{m}:paid", 0)) for m in minutes)
    if failed >= minimum and failed >= rate * (failed + paid):
        return [Alert(kind="payment_failures",
                      message=f"{failed} payments failed in the last {window} min "
                              f"({failed / (failed + paid):.0%} of payment outcomes)")]
    return []
