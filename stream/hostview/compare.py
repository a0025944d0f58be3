"""The review's comparison (本场 vs 往期): this show against the room's last shows. Pure.

Each show's figures are its own live metrics (`metrics.compute` over its own books), so
a number here always equals what `GET /metrics?broadcast=ID` says of that show. The
baseline is the previous show and the median of up to `BASELINE` shows before this one
(a median, not a mean: one holiday special should not move the bar for every evening).
"""

from __future__ import annotations

import statistics
from typing import Literal

import msgspec

from stream.hostview.metrics import RoomMetrics

# The room's shows before this one that the median looks at (seed 001 reviews a week of
# evening shows: five working days).
BASELINE = 5
# What a show is compared on, with the labels the review shows.
KPIS: tuple[tuple[str, str], ...] = (
    ("gmv", "GMV"), ("orders", "orders"), ("conversion", "conversion"), ("gpm", "GPM"),
    ("avg_watch_s", "avg watch (s)"), ("peak_online", "peak online"),
    ("new_viewers", "new viewers"), ("nudge_uplift", "nudge uplift"))
Trend = Literal["up", "down", "same"]


class ShowFigures(msgspec.Struct, frozen=True, kw_only=True):
    """One show's figures, as its own metrics give them."""

    broadcast_id: str | None
    started_at: int | None
    gmv: float
    orders: int
    conversion: float  # buyers / unique viewers
    gpm: float  # GMV per 1,000 views
    avg_watch_s: float
    peak_online: int
    new_viewers: int
    nudge_uplift: float | None  # treatment conversion - holdout conversion, all rules


class Change(msgspec.Struct, frozen=True, kw_only=True):
    kpi: str
    this: float | None
    previous: float | None
    median: float | None
    vs_previous: Trend | None  # None when either side is unknown
    vs_median: Trend | None


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    this: ShowFigures
    previous: ShowFigures | None  # None for the room's first show
    baseline: list[ShowFigures]  # the shows the median is of, newest first
    changes: list[Change]  # one per KPIS entry, in that order


def figures(m: RoomMetrics) -> ShowFigures:
    t = m.totals
    tv = sum(n.treatment_viewers for n in m.nudges)
    hv = sum(n.holdout_viewers for n in m.nudges)
    uplift = None
    if tv and hv:
        uplift = round(sum(n.treatment_converted for n in m.nudges) / tv
                       - sum(n.holdout_converted for n in m.nudges) / hv, 4)
    return ShowFigures(broadcast_id=m.broadcast_id, started_at=m.started_at, gmv=t.gmv,
                       orders=t.orders, conversion=t.conversion_rate, gpm=t.gpm,
                       avg_watch_s=t.avg_watch_s, peak_online=t.peak,
                       new_viewers=t.new_viewers, nudge_uplift=uplift)


def trend(now: float | None, then: float | None) -> Trend | None:
    if now is None or then is None:
        return None
    return "up" if now > then else "down" if now < then else "same"


def _value(f: ShowFigures, kpi: str) -> float | None:
    value: float | None = getattr(f, kpi)
    return value


def compare(this: RoomMetrics, before: list[RoomMetrics]) -> Comparison:
    """This show against `before`: the room's earlier shows, newest first (only the first
    BASELINE count)."""
    now = figures(this)
    baseline = [figures(m) for m in before[:BASELINE]]
    previous = baseline[0] if baseline else None
    changes = []
    for kpi, _ in KPIS:
        values = [v for v in (_value(f, kpi) for f in baseline) if v is not None]
        median = round(statistics.median(values), 4) if values else None
        mine = _value(now, kpi)
        last = None if previous is None else _value(previous, kpi)
        changes.append(Change(kpi=kpi, this=mine, previous=last, median=median,
                              vs_previous=trend(mine, last), vs_median=trend(mine, median)))
    return Comparison(this=now, previous=previous, baseline=baseline, changes=changes)
