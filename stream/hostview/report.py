"""The post-live review (复盘): seed 001's five dimensions, as JSON and as an HTML page.

1. traffic source, 2. conversion by content segment, 3. user layers (new / returning),
4. the unconverted (cart unpaid, payment failed, watched only), 5. leaders (团长) by
region. Totals are the live metrics' own (`metrics.compute` over the same counters),
and every breakdown is a partition of the same viewers, so it adds up to them.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable

import msgspec

from stream.engine.state import PRESENCE_TIMEOUT_MS
from stream.hostview.compare import BASELINE, KPIS, Comparison, compare
from stream.hostview.metrics import NudgeMetrics, RoomMetrics, SegmentMetrics, Totals, compute
from stream.hostview.reader import RoomReader, Viewer
from stream.store.connect import Client

UNCONVERTED = ("payment_failed", "cart_unpaid", "watched_only")


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """Viewers sharing one value of a dimension, and what they did."""

    key: str
    viewers: int
    buyers: int
    gmv: float
    conversion: float  # buyers / viewers
    avg_watch_s: float
    region: str | None = None  # leaders only: the region most of their viewers came from


class Review(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    broadcast_id: str | None
    started_at: int | None
    ended_at: int | None
    totals: Totals
    sources: list[Group]
    segments: list[SegmentMetrics]
    layers: list[Group]
    unconverted: list[Group]  # keys from UNCONVERTED; buyers and GMV are 0 by definition
    leaders: list[Group]
    regions: list[Group]
    # Per rule: uplift with its 95% interval and verdict, suppressions by reason.
    nudges: list[NudgeMetrics] = []
    # This show against the room's last shows (None when built without them).
    comparison: Comparison | None = None


def _groups(viewers: Iterable[Viewer], key: Callable[[Viewer], str | None]) -> list[Group]:
    buckets: dict[str, list[Viewer]] = {}
    for v in viewers:
        k = key(v)
        if k is not None:
            buckets.setdefault(k, []).append(v)
    out = []
    for k, vs in buckets.items():
        buyers = sum(v.paid_at is not None for v in vs)
        regions = [v.region for v in vs if v.region]
        out.append(Group(key=k, viewers=len(vs), buyers=buyers,
                         gmv=round(sum(v.spend for v in vs), 2),
                         conversion=round(buyers / len(vs), 4),
                         avg_watch_s=round(sum(v.watched_ms for v in vs) / len(vs) / 1000, 1),
                         region=max(set(regions), key=regions.count) if regions else None))
    return sorted(out, key=lambda g: (-g.gmv, -g.viewers, g.key))


def unconverted_reason(v: Viewer) -> str | None:
    """Why a viewer did not buy; None for a buyer. A failed payment outranks a cart."""
    if v.paid_at is not None:
        return None
    if v.payment_failed:
        return "payment_failed"
    return "cart_unpaid" if v.carted else "watched_only"


def build(metrics: RoomMetrics, viewers: list[Viewer],
          before: list[RoomMetrics] | None = None) -> Review:
    """The review from the room's final metrics and its viewers, compared with `before`
    (the room's earlier shows' metrics, newest first) when given (pure)."""
    unconverted = {g.key: g for g in _groups(viewers, unconverted_reason)}
    return Review(
        room_id=metrics.room_id, broadcast_id=metrics.broadcast_id,
        started_at=metrics.started_at, ended_at=metrics.ended_at,
        totals=metrics.totals,
        sources=_groups(viewers, lambda v: v.source),
        segments=metrics.segments,
        layers=_groups(viewers, lambda v: v.layer),
        unconverted=[unconverted.get(k) or Group(key=k, viewers=0, buyers=0, gmv=0.0,
                                                 conversion=0.0, avg_watch_s=0.0)
                     for k in UNCONVERTED],
        leaders=_groups(viewers, lambda v: v.leader or None),
        regions=_groups(viewers, lambda v: v.region or "(unknown)"),
        nudges=metrics.nudges,
        comparison=None if before is None else compare(metrics, before),
    )


async def review(redis: Client, room_id: str, *, broadcast: str | None = None,
                 presence_timeout_ms: int = PRESENCE_TIMEOUT_MS) -> Review:
    """Read one broadcast of the room (default: the one on air, or the latest) and build
    its review (the room's clock caps open watch time)."""
    reader = RoomReader(redis, presence_timeout_ms=presence_timeout_ms)
    wall = int(time.time() * 1000)
    metrics = compute(await reader.raw(room_id, wall_now_ms=wall, broadcast=broadcast))
    end = metrics.now_ms if metrics.ended_at is None else min(metrics.now_ms, metrics.ended_at)
    # The room's broadcasts list is the source of the shows before this one.
    shows = (await reader.room(room_id)).broadcasts
    book = await reader.book(room_id, broadcast)
    before = [compute(await reader.raw(room_id, wall_now_ms=wall, broadcast=b.broadcast_id))
              for b in shows[max(0, book - BASELINE):book][::-1]]
    return build(metrics, await reader.viewers(room_id, end_ms=end, broadcast=broadcast),
                 before)


# --- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.5 system-ui,"PingFang SC","Noto Sans CJK SC",sans-serif;margin:24px auto;
max-width:1000px;color:#1f2328;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:2px solid #ff5a5f;
padding-bottom:4px}table{border-collapse:collapse;width:100%;margin:8px 0}
td,th{padding:4px 8px;border-bottom:1px solid #d0d7de;text-align:right}
td:first-child,th:first-child{text-align:left}.kpis{display:flex;flex-wrap:wrap;gap:12px}
.kpi{background:#f6f8fa;border-radius:6px;padding:8px 12px;min-width:130px}
.kpi b{display:block;font-size:20px}.muted{color:#656d76}svg text{font-size:11px;fill:#1f2328}
.up{color:#1a7f37}.down{color:#cf222e}
"""

_UNCONVERTED_LABELS = {"payment_failed": "支付失败 payment failed",
                       "cart_unpaid": "加购未付 cart unpaid",
                       "watched_only": "只看未买 watched only"}


def _bars(rows: list[tuple[str, float]], *, unit: str = "", color: str = "#ff5a5f") -> str:
    """A horizontal bar chart as inline SVG."""
    if not rows:
        return '<p class="muted">no data</p>'
    top = max(v for _, v in rows) or 1
    h = 22
    parts = [f'<svg viewBox="0 0 700 {h * len(rows) + 4}" width="100%" role="img">']
    for i, (label, v) in enumerate(rows):
        w = 440 * v / top
        y = i * h + 2
        parts.append(f'<text x="0" y="{y + 15}">{html.escape(label[:28])}</text>'
                     f'<rect x="190" y="{y + 3}" width="{w:.1f}" height="{h - 6}" '
                     f'fill="{color}"/><text x="{196 + w:.1f}" y="{y + 15}">'
                     f'{unit}{v:,.2f}</text>'.replace(".00<", "<"))
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _group_table(groups: list[Group], name: str, *, region: bool = False) -> str:
    headers = [name, *(["region"] if region else []), "viewers", "buyers", "conversion",
               "GMV", "avg watch (s)"]
    return _table(headers, [[g.key, *([g.region or "–"] if region else []), g.viewers,
                             g.buyers, _pct(g.conversion), f"{g.gmv:,.2f}", g.avg_watch_s]
                            for g in groups])


def _when(ms: int | None) -> str:
    return "–" if ms is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def _signed_pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def _nudge_table(nudges: list[NudgeMetrics]) -> str:
    if not nudges:
        return '<p class="muted">no nudge decided</p>'
    rows: list[list[object]] = []
    for n in nudges:
        ci = n.uplift_ci
        rows.append([
            n.rule_id, n.fired, f"{n.treatment_converted}/{n.treatment_viewers}",
            f"{n.holdout_converted}/{n.holdout_viewers}",
            "–" if n.uplift is None else f"{_signed_pts(n.uplift)} pts",
            "–" if ci is None else f"[{_signed_pts(ci[0])}, {_signed_pts(ci[1])}]",
            n.verdict,
            ", ".join(f"{k} {v}" for k, v in n.suppressed.items()) or "–"])
    return (_table(["rule", "shown", "paid / nudged", "paid / held out", "uplift",
                    "95% interval (pts)", "verdict", "suppressed by reason"], rows)
            + '<p class="muted">uplift: conversion of nudged viewers minus the holdout\'s; '
              "interval: Newcombe's hybrid score; a verdict only once it excludes 0.</p>")


def render_html(r: Review) -> str:
    t = r.totals
    kpis = [("GMV", f"¥{t.gmv:,.2f}"), ("orders / paid", f"{t.orders} / {t.paid}"),
            ("buyers", t.buyers), ("unique viewers", t.viewers), ("views", t.joins),
            ("peak online", t.peak), ("conversion", _pct(t.conversion_rate)),
            ("GPM", f"¥{t.gpm:,.2f}"), ("avg watch", f"{t.avg_watch_s:.0f} s"),
            ("fan-club joins", t.fan_joins), ("nudges", t.nudges)]
    seg_rows = [[s.segment, s.cart_clicks, s.orders, s.paid, _pct(s.click_to_order),
                 f"{s.gmv:,.2f}"] for s in r.segments]
    unconverted = sum(g.viewers for g in r.unconverted)
    sections = [
        ("sources", "1. 流量来源 Traffic source",
         _bars([(g.key, g.gmv) for g in r.sources], unit="¥")
         + _group_table(r.sources, "source")),
        ("segments", "2. 内容转化 Conversion by content segment",
         _bars([(s.segment, s.gmv) for s in r.segments], unit="¥", color="#3fb950")
         + _table(["segment", "cart clicks", "orders", "paid", "click → order", "GMV"],
                  seg_rows)),
        ("layers", "3. 用户分层 User layers",
         _bars([(g.key, g.conversion * 100) for g in r.layers], color="#58a6ff")
         + '<p class="muted">bars: conversion %</p>' + _group_table(r.layers, "layer")),
        ("unconverted", "4. 未转化归因 Attribution of the unconverted",
         f'<p>{unconverted} of {t.viewers} viewers did not buy.</p>'
         + _bars([(_UNCONVERTED_LABELS[g.key], g.viewers) for g in r.unconverted],
                 color="#d29922")
         + _table(["reason", "viewers", "share of unconverted", "avg watch (s)"],
                  [[_UNCONVERTED_LABELS[g.key], g.viewers,
                    _pct(g.viewers / unconverted if unconverted else None), g.avg_watch_s]
                   for g in r.unconverted])),
        ("leaders", "5. 团长业绩 Leader performance by region",
         _bars([(f"{g.key} ({g.region or '–'})", g.gmv) for g in r.leaders], unit="¥",
               color="#8250df")
         + _group_table(r.leaders, "leader", region=True)
         + "<h3>by region</h3>" + _group_table(r.regions, "region")),
    ]
    sections.append(("nudges", "6. 提醒效果 Nudges: uplift and why not shown",
                     _nudge_table(r.nudges)))
    if r.comparison is not None:
        sections.append(("comparison", "7. 本场 vs 往期 This show against the room's last shows",
                         _comparison_html(r.comparison)))
    body = "".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    kpi_html = "".join(f'<div class="kpi"><b>{html.escape(str(v))}</b>'
                       f'<span class="muted">{html.escape(k)}</span></div>' for k, v in kpis)
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            f"<title>复盘 {html.escape(r.room_id)}</title><style>{_CSS}</style></head><body>"
            f"<h1>直播复盘 Post-live review · {html.escape(r.room_id)}</h1>"
            f'<p class="muted">{_when(r.started_at)} – {_when(r.ended_at)}</p>'
            f'<div class="kpis" id="totals">{kpi_html}</div>{body}</body></html>')


_ARROWS = {"up": '<span class="up">▲</span>', "down": '<span class="down">▼</span>',
           "same": '<span class="muted">=</span>'}


def _figure(kpi: str, value: float | None) -> str:
    if value is None:
        return "–"
    if kpi in ("conversion", "nudge_uplift"):
        return f"{value:+.1%}" if kpi == "nudge_uplift" else f"{value:.1%}"
    if kpi in ("gmv", "gpm"):
        return f"¥{value:,.2f}"
    # Counts are whole, but a median of an even number of shows may end in .5.
    whole = kpi != "avg_watch_s" and float(value).is_integer()
    return f"{value:,.0f}" if whole else f"{value:,.1f}"


def _comparison_html(c: Comparison) -> str:
    """A table: this show, the previous one, the median of the last shows, with the change
    marked up (green) or down (red) against each."""
    if not c.baseline:
        return '<p class="muted">the room\'s first show: nothing to compare with yet</p>'
    labels = dict(KPIS)
    rows = []
    for ch in c.changes:
        cells = [labels[ch.kpi], _figure(ch.kpi, ch.this),
                 _figure(ch.kpi, ch.previous), _ARROWS.get(ch.vs_previous or "", "–"),
                 _figure(ch.kpi, ch.median), _ARROWS.get(ch.vs_median or "", "–")]
        rows.append("<tr>" + "".join(
            f"<td>{cell if '<span' in cell else html.escape(cell)}</td>" for cell in cells)
            + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (
        "", "this show", "previous", "", f"median of last {len(c.baseline)}", ""))
    shows = ", ".join(html.escape(f.broadcast_id or "–") for f in c.baseline)
    return (f'<table id="compare"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table><p class="muted">earlier shows, newest first: {shows}</p>')
