"""The host's view end to end: a simulated show on two workers and a gateway, watched in
headless Chromium; at the end the metrics equal a recount of the show's event log,
Prometheus agrees, and the post-live review adds up to the same totals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, browser_missing, require_browser

from stream.core.config import Settings, to_env
from stream.core.counters import minute_of
from stream.core.models import (
    CartAdded,
    CartClicked,
    Comment,
    Event,
    FanJoined,
    Like,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    SegmentStarted,
    Share,
    ViewerJoined,
    ViewerLeft,
)
from stream.core.reasons import REASONS
from stream.local import sender, showplan
from stream.local.embedded import EmbeddedStack
from stream.local.runner import Running, running, unrouted_dead_letters, wait_drained

pytestmark = pytest.mark.integration

SHOW_S = 20.0  # wall seconds; at 30x a 10-minute show
LOW_STOCK = showplan.Product("sesame-oil-250ml", "小磨香油 250ml", 19.9, 10)


def screenshots_dir(factory: pytest.TempPathFactory) -> Path:
    """`LC_SCREENSHOTS=docs` keeps the dashboard and review screenshots for the README."""
    kept = os.environ.get("LC_SCREENSHOTS")
    return Path(kept) if kept else factory.mktemp("shots")


@dataclass
class Seen:
    """What the browser saw on the dashboard during the show."""

    first: dict[str, Any] = field(default_factory=dict)
    later: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)  # when the screenshot was taken
    error: str | None = None


@dataclass
class Show:
    run: Running
    plan: showplan.Plan
    events: list[Event]
    seen: Seen | None


_READ = """() => ({load: window.__lcLoad, updates: Number(document.body.dataset.updates),
  orders: document.getElementById('kpi-orders').textContent,
  viewers: document.getElementById('kpi-viewers').textContent,
  gmv: document.getElementById('kpi-gmv').textContent,
  skus: document.querySelectorAll('#skus .row').length,
  alerts: [...document.querySelectorAll('#alerts .alert')].map((a) => a.textContent),
  bars: document.querySelectorAll('#chart-orders rect').length,
  reasons: [...document.querySelectorAll('#nudges .chip[data-reason]')]
    .map((c) => c.dataset.reason),
  uplifts: [...document.querySelectorAll('#nudges .uplift-value')].map((u) => u.textContent),
  verdicts: [...document.querySelectorAll('#nudges .verdict')].map((v) => v.textContent)})"""


async def watch_dashboard(url: str, seen: Seen, *, screenshot: Path | None) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(url)
            await page.wait_for_function(
                "Number(document.body.dataset.updates) >= 1 && "
                "document.getElementById('kpi-viewers').textContent !== '0'", timeout=60_000)
            seen.first = await page.evaluate(_READ)
            # Three more polls (one a second) without a reload; waited for, not slept on.
            await page.wait_for_function(
                f"Number(document.body.dataset.updates) >= {seen.first['updates'] + 3}",
                timeout=60_000)
            seen.later = await page.evaluate(_READ)
            await asyncio.sleep(SHOW_S * 0.35)
            # Suppressions come once the first popups are due (3 minutes of show).
            await page.wait_for_function(
                "document.querySelectorAll('#nudges .chip[data-reason]').length > 0",
                timeout=60_000)
            with contextlib.suppress(Exception):  # an interval needs holdout viewers too
                await page.wait_for_function(
                    "[...document.querySelectorAll('#nudges .uplift-value')]"
                    ".some((u) => u.textContent.includes('['))", timeout=30_000)
            seen.last = await page.evaluate(_READ)
            if screenshot is not None:
                await page.screenshot(path=str(screenshot), full_page=True)
        finally:
            await browser.close()


@pytest.fixture(scope="module")
async def show(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory,
               ) -> AsyncIterator[Show]:
    settings = Settings(kafka_url=stack.kafka_url, redis_url=stack.redis_url,
                        topic_prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=4)
    room = f"hv-{uuid.uuid4().hex[:6]}"
    # A sixth product loaded short, so the dashboard has a low-stock alert to show.
    products = [*showplan.DEFAULT_PRODUCTS, LOW_STOCK]
    plan = showplan.plan_for(room_id=room, viewers=300, duration_s=SHOW_S, speed=30, seed=5,
                              products=products)
    events = [e for _, e in showplan.broadcast(plan)]
    shots = screenshots_dir(tmp_path_factory)
    async with running(settings, workers=2) as run:
        unrouted = await unrouted_dead_letters(run.redis)  # earlier tests' garbage
        sim = asyncio.create_task(sender.run(plan, gateway=run.gateway_url,
                                                tokens=run.tokens, progress=False))
        seen = None
        if browser_missing() is None:
            seen = Seen()
            try:
                await watch_dashboard(
                    f"{run.gateway_url}/dashboard/{room}#token={run.tokens.for_role('host')}",
                    seen,
                    screenshot=shots / "dashboard.png")
            except Exception as exc:  # reported by the browser test, not here
                seen.error = repr(exc)
        sent = await sim
        assert sent.rejected == 0, sent.errors
        stats = await wait_drained(run.redis, room, expected=sent.events_sent,
                                   unrouted_before=unrouted)
        short = {t: n - int(stats.get(f"ev:{t}", 0)) for t, n in sent.by_type.items()
                 if int(stats.get(f"ev:{t}", 0)) != n}
        assert stats["events"] == sent.events_sent, f"processed per type fell short: {short}"
        # The last batch's presence and engagement scripts run after its counters: wait
        # until what they write (online, watch time, nudges) agrees with the log and two
        # reads a cache period apart (0.5 s) are the same, instead of a fixed sleep.
        await metrics_settled(f"{run.gateway_url}/v1/rooms/{room}/metrics", recount(events),
                              token=run.tokens.for_role("host"))
        yield Show(run, plan, events, seen)


async def metrics_settled(url: str, want: dict[str, Any], *, token: str,
                          timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: Any = None
    while True:
        m = await get_json(url, token=token)
        now = (m["totals"], m["nudges"], m["segments"])
        t = m["totals"]
        if (t["online"], t["viewers"]) == (want["online"], want["viewers"]) and now == last:
            return
        assert asyncio.get_running_loop().time() < deadline, f"metrics never settled: {t}"
        last = now
        await asyncio.sleep(0.6)


async def get_json(url: str, *, token: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


# --- the recount ----------------------------------------------------------------------------


def recount(events: list[Event]) -> dict[str, Any]:
    """The live metrics computed straight from the event log, knowing nothing of Redis."""
    events = sorted(events, key=lambda e: e.ts)
    c: Counter[str] = Counter()
    minute: defaultdict[int, Counter[str]] = defaultdict(Counter)
    first_join: dict[str, ViewerJoined] = {}
    joined_at: dict[str, int] = {}
    peak = 0
    watched: Counter[str] = Counter()
    placed: dict[str, OrderPlaced] = {}
    paid: dict[str, OrderPaid] = {}
    settled: set[str] = set()
    segments = sorted((e.ts, e.segment) for e in events if isinstance(e, SegmentStarted))
    seg: Counter[str] = Counter()
    end = max(e.ts for e in events if type(e).__name__ == "BroadcastEnded")

    def segment(ts: int) -> str:
        """On air at `ts`, to the second: the second a segment starts in is its own."""
        on = [name for start, name in segments if start // 1000 <= ts // 1000]
        return on[-1] if on else ""

    for e in events:
        m = minute[minute_of(e.ts)]
        if isinstance(e, ViewerJoined):
            c["joins"] += 1
            m["joins"] += 1
            first_join.setdefault(e.viewer_id, e)
            joined_at.setdefault(e.viewer_id, e.ts)
            peak = max(peak, len(joined_at))
        elif isinstance(e, ViewerLeft) and e.viewer_id in joined_at:
            watched[e.viewer_id] += e.ts - joined_at.pop(e.viewer_id)
        elif isinstance(e, Like):
            c["likes"] += e.count
            m["likes"] += e.count
        elif isinstance(e, Comment):
            c["comments"] += 1
            m["comments"] += 1
        elif isinstance(e, CartClicked):
            c["cart_clicks"] += 1
            m["cart_clicks"] += 1
            seg[f"{segment(e.ts)}:cart_clicks"] += 1
        elif isinstance(e, FanJoined | Share):
            c[type(e).__name__] += 1
        elif isinstance(e, OrderPlaced):
            placed[e.order_id] = e
            m["orders"] += 1
            seg[f"{segment(e.ts)}:orders"] += 1
        elif isinstance(e, OrderPaid) and e.order_id in placed:
            paid[e.order_id] = e
            m["paid"] += 1
            seg[f"{segment(e.ts)}:paid"] += 1
        elif isinstance(e, OrderPaymentFailed | OrderCancelled):
            settled.add(e.order_id)
            if isinstance(e, OrderPaymentFailed):
                c["payment_failed"] += 1
                m["payment_failed"] += 1
        elif isinstance(e, CartAdded):
            pass
    for viewer, ts in joined_at.items():  # still in the room at the end
        watched[viewer] += end - ts
    amount = {oid: sum(i.qty * i.price for i in o.items) for oid, o in placed.items()}
    sold: Counter[str] = Counter()
    reserved: Counter[str] = Counter()
    for oid, o in placed.items():
        for item in o.items:
            if oid in paid:
                sold[item.sku] += item.qty
            elif oid not in settled:
                reserved[item.sku] += item.qty
    viewers = len(first_join)
    return {
        **c, "viewers": viewers, "online": len(joined_at), "peak": peak,
        "new": sum(j.returning is False for j in first_join.values()),
        "returning": sum(j.returning is True for j in first_join.values()),
        "sources": dict(Counter(j.source for j in first_join.values())),
        "avg_watch_s": round(sum(watched.values()) / viewers / 1000, 1),
        "orders": len(placed), "paid": len(paid),
        "gmv": sum(amount[o] for o in paid),
        "buyers": len({p.viewer_id for p in paid.values()}),
        "minutes": {k: dict(v) for k, v in minute.items()},
        "sold": dict(sold), "reserved": dict(reserved), "segments": dict(seg),
    }


async def test_metrics_equal_a_recount_of_the_event_log(show: Show) -> None:
    m = await get_json(f"{show.run.gateway_url}/v1/rooms/{show.plan.room_id}/metrics",
                       token=show.run.tokens.for_role("monitor"))
    want = recount(show.events)
    t = m["totals"]
    assert t["orders"] > 20 and t["paid"] > 10 and t["viewers"] > 200  # a real show ran
    for key in ("joins", "likes", "comments", "cart_clicks", "orders", "paid", "buyers",
                "viewers", "online", "payment_failed"):
        assert t[key] == want[key], key
    assert t["gmv"] == pytest.approx(want["gmv"], abs=0.01)
    assert (t["new_viewers"], t["returning_viewers"]) == (want["new"], want["returning"])
    assert (t["fan_joins"], t["shares"]) == (want["FanJoined"], want["Share"])
    assert t["avg_watch_s"] == pytest.approx(want["avg_watch_s"], abs=0.11)
    # Peak is the highest count in processing order; partitions run a batch apart.
    assert t["online"] <= t["peak"] <= t["viewers"]
    assert abs(t["peak"] - want["peak"]) <= max(3, want["peak"] // 20), (t["peak"], want["peak"])
    assert t["conversion_rate"] == pytest.approx(want["buyers"] / want["viewers"], abs=1e-4)
    assert t["gpm"] == pytest.approx(want["gmv"] / want["joins"] * 1000, abs=0.01)
    assert m["sources"] == want["sources"]
    assert t["orders_rejected"] == 0  # so orders placed == orders reserved, as recounted
    assert [(a["kind"], a["sku"]) for a in m["alerts"]] == [("low_stock", LOW_STOCK.sku)]
    # Per SKU: the inventory's books against the log.
    skus = {s["sku"]: s for s in m["skus"]}
    assert {k: v["sold"] for k, v in skus.items() if v["sold"]} == want["sold"]
    assert {k: v["reserved"] for k, v in skus.items() if v["reserved"]} == want["reserved"]
    for s in skus.values():
        assert s["sell_through"] == pytest.approx(s["sold"] / s["loaded"], abs=1e-4)
    # Per event-time minute, every bucket.
    got = {p["t"] // 60_000: p for p in m["series"]}
    for minute, counts in want["minutes"].items():
        for name, n in counts.items():
            assert got[minute][name] == n, (minute, name)
    # Per segment, exactly: counted per second, summed per segment when read.
    segs = {f"{s['segment']}:{k}": s[k] for s in m["segments"]
            for k in ("cart_clicks", "orders", "paid") if s[k]}
    assert segs == want["segments"]
    # Nudges: counted once each, split by variant, conversion bounded by who was nudged.
    assert sum(n["fired"] + n["held_out"] for n in m["nudges"]) == t["nudges"]
    for n in m["nudges"]:
        assert 0 <= n["treatment_converted"] <= n["treatment_viewers"] <= n["fired"]
        # The interval holds the point estimate once both arms have viewers.
        if n["treatment_viewers"] and n["holdout_viewers"]:
            lo, hi = n["uplift_ci"]
            assert lo <= n["uplift"] <= hi and n["verdict"] in ("better", "worse",
                                                                "not yet clear")
        else:
            assert n["uplift_ci"] is None and n["verdict"] == "not yet clear"
        assert n["suppressed"].get("holdout", 0) == n["held_out"]
    assert t["nudges_suppressed"] == sum(c for n in m["nudges"]
                                         for r, c in n["suppressed"].items() if r != "holdout")


async def test_prometheus_agrees_with_the_json(show: Show) -> None:
    room = show.plan.room_id
    monitor = {"Authorization": f"Bearer {show.run.tokens.for_role('monitor')}"}
    m = await get_json(f"{show.run.gateway_url}/v1/rooms/{room}/metrics",
                       token=show.run.tokens.for_role("monitor"))
    async with aiohttp.ClientSession() as session, session.get(
            f"{show.run.gateway_url}/metrics", headers=monitor) as resp:
        text = await resp.text()

    def value(name: str, **labels: str) -> float:
        want = {"room": room, **labels}
        for line in text.splitlines():
            match = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
            if match and dict(re.findall(r'(\w+)="([^"]*)"', match[1])) == want:
                return float(match[2])
        raise AssertionError(f"{name}{want} not exported")

    t = m["totals"]
    assert value("lc_room_gmv_total") == pytest.approx(t["gmv"])
    assert value("lc_room_orders_total") == t["orders"]
    assert value("lc_room_online_viewers") == t["online"]
    assert value("lc_room_unique_viewers") == t["viewers"]
    sku = m["skus"][0]
    assert value("lc_sku_sold", sku=sku["sku"]) == sku["sold"]
    assert value("lc_segment_orders_total", segment="promo") == next(
        s["orders"] for s in m["segments"] if s["segment"] == "promo")
    assert not re.search(r'viewer="|order="|v-[0-9a-f]{6}-\d{6}', text)  # bounded labels
    # Every series the Grafana dashboard queries is exported.
    grafana = (Path(__file__).parents[2] / "deploy/grafana/dashboard.json").read_text()
    for name in set(re.findall(r"\blc_\w+", grafana)):
        assert re.search(rf"^{name}{{", text, re.MULTILINE), f"{name} is not exported"


async def test_dashboard_updates_live_in_chromium(show: Show) -> None:
    require_browser()
    seen = show.seen
    assert seen is not None and seen.error is None, seen and seen.error
    first, later = seen.first, seen.later
    assert later["load"] == first["load"], "the page reloaded"
    assert later["updates"] >= first["updates"] + 3, (first, later)  # about one a second
    assert (later["orders"], later["viewers"], later["gmv"]) != (
        first["orders"], first["viewers"], first["gmv"]), (first, later)
    assert later["skus"] == len(show.plan.products) and later["bars"] > 0
    assert any(LOW_STOCK.name in a for a in later["alerts"]), later["alerts"]
    # The nudge panel: each rule's suppressions by reason, its uplift and verdict.
    last = seen.last
    assert last["reasons"] and set(last["reasons"]) <= {*REASONS, "other"}, last
    assert last["verdicts"] and len(last["uplifts"]) == len(last["verdicts"]), last


async def test_review_adds_up_to_the_live_totals(show: Show, tmp_path: Path,
                                                  tmp_path_factory: pytest.TempPathFactory,
                                                  ) -> None:
    room = show.plan.room_id
    m = await get_json(f"{show.run.gateway_url}/v1/rooms/{room}/metrics",
                       token=show.run.tokens.for_role("host"))
    env = {**os.environ, **to_env(show.run.settings)}
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "stream", "report", room, "--out", str(out),
                           "--json"], env=env, capture_output=True, timeout=60, check=True)
    r = orjson.loads(done.stdout)
    t = r["totals"]
    for key in ("viewers", "orders", "paid", "buyers", "joins", "online", "peak"):
        assert t[key] == m["totals"][key], key
    assert t["gmv"] == pytest.approx(m["totals"]["gmv"], abs=0.01)
    # Every breakdown partitions the same viewers, buyers and GMV.
    for dim in ("sources", "layers", "regions"):
        assert sum(g["viewers"] for g in r[dim]) == t["viewers"], dim
        assert sum(g["buyers"] for g in r[dim]) == t["buyers"], dim
        assert sum(g["gmv"] for g in r[dim]) == pytest.approx(t["gmv"], abs=0.05), dim
    assert {g["key"]: g["viewers"] for g in r["sources"]} == m["sources"]
    assert sum(g["viewers"] for g in r["unconverted"]) == t["viewers"] - t["buyers"]
    assert all(g["viewers"] > 0 for g in r["unconverted"])  # the show has all three kinds
    assert {g["key"] for g in r["leaders"]} <= {name for name, _ in showplan._LEADERS}
    assert r["leaders"] and all(g["region"] for g in r["leaders"])
    assert sum(s["orders"] for s in r["segments"]) == t["orders"]

    require_browser("report written and checked as JSON")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(out.as_uri())
            titles = await page.locator("section h2").all_inner_texts()
            charts = await page.locator("section svg rect").count()
            await page.screenshot(path=str(screenshots_dir(tmp_path_factory) / "report.png"),
                                  full_page=True)
        finally:
            await browser.close()
    # 7. is this show against the room's last ones (here: its first, nothing to compare).
    assert [t.split(" ")[0] for t in titles] == ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    for word in ("Traffic source", "content segment", "User layers", "unconverted", "Leader"):
        assert any(word in title for title in titles), word
    assert charts >= 10
