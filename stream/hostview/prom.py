"""Room metrics as Prometheus families, built at scrape time from `RoomMetrics`.

Labels stay bounded: room, and per room its SKUs, show segments, nudge rules, traffic
sources (capped) and visitor layers; never a viewer or an order id. Totals are
counters (Grafana takes `rate()` of them for per-minute panels); levels are gauges.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.hostview.metrics import RoomMetrics

# Sources are client-chosen names: export the biggest few per room, fold the rest.
MAX_SOURCES = 12

_ROOM_COUNTERS = (
    ("views", "joins", "Viewer joins (a viewer joining twice counts twice)"),
    ("likes", "likes", "Likes (taps)"),
    ("comments", "comments", "Comments"),
    ("shares", "shares", "Shares"),
    ("fan_joins", "fan_joins", "Fan-club joins"),
    ("cart_clicks", "cart_clicks", "Shopping-bag clicks"),
    ("orders", "orders", "Orders placed and reserved"),
    ("orders_rejected", "orders_rejected", "Orders refused (sold out, unknown SKU, limits)"),
    ("orders_paid", "paid", "Orders paid (confirmed)"),
    ("gmv", "gmv", "GMV of paid orders"),
    ("payment_failures", "payment_failed", "Failed payments"),
    ("orders_cancelled", "cancelled", "Orders cancelled"),
    ("orders_expired", "expired", "Reservations expired unpaid"),
    ("nudges", "nudges", "Nudges decided (treatment and holdout)"),
)
_ROOM_GAUGES = (
    ("online_viewers", "online", "Viewers in the room now"),
    ("peak_viewers", "peak", "Most viewers in the room at once"),
    ("unique_viewers", "viewers", "Distinct viewers who joined"),
    ("avg_watch_seconds", "avg_watch_s", "Average watch time per viewer"),
    ("buyers", "buyers", "Distinct viewers with a paid order"),
    ("conversion_ratio", "conversion_rate", "Buyers per unique viewer"),
    ("gpm", "gpm", "GMV per 1,000 views"),
)


class RoomCollector(Collector):
    def __init__(self, rooms: Sequence[RoomMetrics]) -> None:
        self._rooms = rooms

    def collect(self) -> Iterator[Metric]:
        yield from _room_families(self._rooms)
        yield from _sku_families(self._rooms)
        yield from _breakdowns(self._rooms)


def _room_families(rooms: Sequence[RoomMetrics]) -> Iterator[Metric]:
    for name, field, doc in _ROOM_COUNTERS:
        fam = CounterMetricFamily(f"lc_room_{name}", doc, labels=["room"])
        for r in rooms:
            fam.add_metric([r.room_id], float(getattr(r.totals, field)))
        yield fam
    for name, field, doc in _ROOM_GAUGES:
        gauge = GaugeMetricFamily(f"lc_room_{name}", doc, labels=["room"])
        for r in rooms:
            gauge.add_metric([r.room_id], float(getattr(r.totals, field)))
        yield gauge
    live = GaugeMetricFamily("lc_room_live", "1 while the broadcast is on air", labels=["room"])
    alerts = GaugeMetricFamily("lc_room_alerts", "Active alerts by kind", labels=["room", "kind"])
    for r in rooms:
        live.add_metric([r.room_id], float(r.started_at is not None and r.ended_at is None))
        for kind in ("low_stock", "sold_out", "payment_failures"):
            alerts.add_metric([r.room_id, kind], float(sum(a.kind == kind for a in r.alerts)))
    yield live
    yield alerts


def _sku_families(rooms: Sequence[RoomMetrics]) -> Iterator[Metric]:
    fields = (("sold", "Units sold (paid)"), ("reserved", "Units reserved, unpaid"),
              ("available", "Units available"), ("loaded", "Units loaded and restocked"),
              ("sell_through", "Sold per loaded"))
    for field, doc in fields:
        fam = GaugeMetricFamily(f"lc_sku_{field}", doc, labels=["room", "sku"])
        for r in rooms:
            for s in r.skus:
                fam.add_metric([r.room_id, s.sku], float(getattr(s, field)))
        yield fam
    eta = GaugeMetricFamily("lc_sku_sell_out_seconds",
                            "Projected seconds to sell out at the recent pace",
                            labels=["room", "sku"])
    for r in rooms:
        for s in r.skus:
            if s.sell_out_s is not None:
                eta.add_metric([r.room_id, s.sku], s.sell_out_s)
    yield eta


def _breakdowns(rooms: Sequence[RoomMetrics]) -> Iterator[Metric]:
    seg = {f: CounterMetricFamily(f"lc_segment_{f}", f"{f.replace('_', ' ')} by show segment",
                                  labels=["room", "segment"])
           for f in ("cart_clicks", "orders", "paid", "gmv")}
    src = GaugeMetricFamily("lc_room_viewers_by_source", "Unique viewers by traffic source",
                            labels=["room", "source"])
    lay = GaugeMetricFamily("lc_room_viewers_by_layer", "Unique viewers, new or returning",
                            labels=["room", "layer"])
    fired = CounterMetricFamily("lc_nudges_fired", "Nudges fired by rule and variant",
                                labels=["room", "rule", "variant"])
    conv = GaugeMetricFamily("lc_nudge_conversion_ratio",
                             "Nudged viewers who paid afterwards, by variant",
                             labels=["room", "rule", "variant"])
    uplift = GaugeMetricFamily("lc_nudge_uplift", "Treatment minus holdout conversion",
                               labels=["room", "rule"])
    # Reasons come from the one table in stream.core.reasons (unknown ones are `other`),
    # so this family has at most rules x (reasons + 1) series per room.
    suppressed = CounterMetricFamily("lc_nudges_suppressed",
                                     "Nudges decided but not shown, by rule and reason",
                                     labels=["room", "rule", "reason"])
    bounds = GaugeMetricFamily("lc_nudge_uplift_ci",
                               "95% interval of the uplift (Newcombe hybrid score), by bound",
                               labels=["room", "rule", "bound"])
    for r in rooms:
        for s in r.segments:
            for f, fam in seg.items():
                fam.add_metric([r.room_id, s.segment], float(getattr(s, f)))
        ranked = sorted(r.sources.items(), key=lambda kv: -kv[1])
        for name, n in ranked[:MAX_SOURCES]:
            src.add_metric([r.room_id, name], float(n))
        if len(ranked) > MAX_SOURCES:
            src.add_metric([r.room_id, "other"], float(sum(n for _, n in ranked[MAX_SOURCES:])))
        lay.add_metric([r.room_id, "new"], float(r.totals.new_viewers))
        lay.add_metric([r.room_id, "returning"], float(r.totals.returning_viewers))
        for rule in r.nudges:
            fired.add_metric([r.room_id, rule.rule_id, "treatment"], float(rule.fired))
            fired.add_metric([r.room_id, rule.rule_id, "holdout"], float(rule.held_out))
            if rule.treatment_rate is not None:
                conv.add_metric([r.room_id, rule.rule_id, "treatment"], rule.treatment_rate)
            if rule.holdout_rate is not None:
                conv.add_metric([r.room_id, rule.rule_id, "holdout"], rule.holdout_rate)
            if rule.uplift is not None:
                uplift.add_metric([r.room_id, rule.rule_id], rule.uplift)
            if rule.uplift_ci is not None:
                bounds.add_metric([r.room_id, rule.rule_id, "lower"], rule.uplift_ci[0])
                bounds.add_metric([r.room_id, rule.rule_id, "upper"], rule.uplift_ci[1])
            for reason, count in rule.suppressed.items():
                suppressed.add_metric([r.room_id, rule.rule_id, reason], float(count))
    yield from seg.values()
    yield from (src, lay, fired, conv, uplift, bounds, suppressed)
