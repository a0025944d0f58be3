"""After the show, end to end: a simulated broadcast through two workers; its pick lists
equal a recount of the paid orders in the event log and the stock's `sold`, the CSV
parses back to the same rows, personal data stays away from a monitor token, and the
follow-ups served are the ones in Kafka, once each. Then a room live three times: the
review's comparison equals each broadcast's own metrics."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from helpers import read_all
from test_hostview import (
    CHROMIUM,
    CHROMIUM_ARGS,
    browser_missing,
    metrics_settled,
    screenshots_dir,
)
from test_hostview import recount as metrics_recount

from stream.core.config import Settings, to_env
from stream.core.models import (
    BroadcastStarted,
    Event,
    FollowUp,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    ViewerJoined,
)
from stream.core.topics import Topics
from stream.local import sender, showplan
from stream.local.runner import Running, running, unrouted_dead_letters, wait_drained
from stream.store.ledger import read_stats

pytestmark = pytest.mark.integration

BOM = "\ufeff"


async def get(url: str, *, token: str | None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read()


async def get_ok(url: str, *, token: str) -> bytes:
    status, _, body = await get(url, token=token)
    assert status == 200, body
    return body


def parse_csv(body: bytes) -> list[dict[str, str]]:
    text = body.decode("utf-8")
    assert text.startswith(BOM)
    return list(csv.DictReader(io.StringIO(text.removeprefix(BOM))))


# --- the recount: straight from the event log ---------------------------------------------


def recount(events: list[Event]) -> dict[str, Any]:
    """Paid orders per SKU, per leader and per buyer, and the orders left out, from the
    show's events alone (a payment makes a placed order paid; the show's reservations
    outlast it, so none expires)."""
    events = sorted(events, key=lambda e: e.ts)
    joined: dict[str, ViewerJoined] = {}
    placed: dict[str, OrderPlaced] = {}
    paid: set[str] = set()
    cancelled: set[str] = set()
    failed: set[str] = set()
    for e in events:
        if isinstance(e, ViewerJoined):
            joined.setdefault(e.viewer_id, e)
        elif isinstance(e, OrderPlaced):
            placed[e.order_id] = e
        elif isinstance(e, OrderPaid) and e.order_id in placed:
            paid.add(e.order_id)
        elif isinstance(e, OrderCancelled):
            cancelled.add(e.order_id)
        elif isinstance(e, OrderPaymentFailed):
            failed.add(e.order_id)
    excluded = Counter({"unpaid": 0, "cancelled": 0, "payment_failed": 0, "expired": 0,
                        "rejected": 0})
    for oid in placed.keys() - paid:
        excluded["cancelled" if oid in cancelled else
                 "payment_failed" if oid in failed else "unpaid"] += 1
    sku_units: Counter[str] = Counter()
    sku_amount: Counter[str] = Counter()
    leaders: dict[str, dict[str, Any]] = {}
    buyers: dict[str, Counter[str]] = defaultdict(Counter)
    for oid in sorted(paid):
        o = placed[oid]
        j = joined.get(o.viewer_id)
        leader = (j.leader_id if j else None) or "direct"
        row = leaders.setdefault(leader, {"units": Counter(), "buyers": set(), "orders": 0,
                                          "amount": 0.0})
        row["orders"] += 1
        row["buyers"].add(o.viewer_id)
        for item in o.items:
            sku_units[item.sku] += item.qty
            sku_amount[item.sku] += item.qty * item.price
            row["units"][item.sku] += item.qty
            row["amount"] += item.qty * item.price
            buyers[o.viewer_id][item.sku] += item.qty
    for row in leaders.values():
        regions = Counter(r for r in ((joined[b].region if b in joined else None)
                                      for b in row["buyers"]) if r)
        row["region"] = sorted(regions, key=lambda r: (-regions[r], r))[0] if regions else ""
    return {"paid": len(paid), "excluded": dict(excluded), "sku_units": dict(sku_units),
            "sku_amount": dict(sku_amount), "leaders": leaders, "buyers": buyers,
            "joined": joined}


# --- one show through two workers ---------------------------------------------------------


async def settle(run: Running, room: str, sent: sender.SimStats, viewers: int,
                 unrouted: int) -> None:
    """Every event processed, and every viewer's follow-up decided (at the end)."""
    stats = await wait_drained(run.redis, room, expected=sent.events_sent,
                               unrouted_before=unrouted)
    assert stats["events"] == sent.events_sent, stats
    deadline = time.monotonic() + 60
    while (await read_stats(run.redis, room)).get("followups", 0) < viewers:
        assert time.monotonic() < deadline, await read_stats(run.redis, room)
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.5)  # the last acks


async def test_pick_lists_and_follow_ups_equal_the_event_log(settings: Settings) -> None:
    room = f"pick-{uuid.uuid4().hex[:6]}"
    plan = showplan.plan_for(room_id=room, viewers=300, duration_s=20, speed=30, seed=11)
    events = [e for _, e in showplan.broadcast(plan)]
    want = recount(events)
    async with running(settings, workers=2) as run:
        unrouted = await unrouted_dead_letters(run.redis)
        sent = await sender.run(plan, gateway=run.gateway_url, tokens=run.tokens,
                                progress=False)
        assert sent.rejected == 0, sent.errors
        await settle(run, room, sent, len(want["joined"]), unrouted)
        base = f"{run.gateway_url}/v1/rooms/{room}"
        commerce, host = run.tokens.for_role("commerce"), run.tokens.for_role("host")
        monitor, platform = run.tokens.for_role("monitor"), run.tokens.for_role("platform")
        views = {by: orjson.loads(await get_ok(f"{base}/picklist?by={by}", token=commerce))
                 for by in ("sku", "leader", "customer")}
        csvs = {by: parse_csv(await get_ok(f"{base}/picklist?by={by}&format=csv",
                                           token=host))
                for by in ("sku", "leader", "customer")}
        stock = orjson.loads(await get_ok(f"{base}/stock", token=commerce))
        followups = orjson.loads(await get_ok(f"{base}/followups", token=commerce))
        followups_csv = parse_csv(await get_ok(f"{base}/followups?format=csv", token=commerce))
        refusals = {
            "customer by monitor": await get(f"{base}/picklist?by=customer", token=monitor),
            "followups by monitor": await get(f"{base}/followups", token=monitor),
            "leader by platform": await get(f"{base}/picklist?by=leader", token=platform),
            "sku without a token": await get(f"{base}/picklist?by=sku", token=None),
            "a bad view": await get(f"{base}/picklist?by=colour", token=commerce),
            "an unknown broadcast": await get(f"{base}/picklist?broadcast=nope", token=host),
        }
        refusals["sku by monitor"] = await get(f"{base}/picklist?by=sku", token=monitor)
        env = {**os.environ, **to_env(run.settings)}
        cli = subprocess.run([sys.executable, "-m", "stream", "picklist", room, "--by",
                              "leader", "--csv"], env=env, capture_output=True, timeout=60,
                             check=True)
        cli_followups = subprocess.run([sys.executable, "-m", "stream", "followups", room,
                                        "--csv"], env=env, capture_output=True, timeout=60,
                                       check=True)
        topics = Topics(run.settings.topic_prefix)
        kafka = [msgspec.json.decode(v, type=FollowUp)
                 for _, _, _, v in await read_all(run.settings, [topics.followups])]

    assert want["paid"] > 10 and len(want["leaders"]) > 2  # a real show ran
    assert {k: v for k, v in views["sku"]["excluded"].items() if v} == {
        k: v for k, v in want["excluded"].items() if v}
    # By SKU: the recount, and the inventory's own books (the stock's `sold`).
    by_sku = {r["sku"]: r for r in views["sku"]["skus"]}
    assert {s: r["units"] for s, r in by_sku.items()} == want["sku_units"]
    for sku, amount in want["sku_amount"].items():
        assert by_sku[sku]["amount"] == pytest.approx(amount, abs=0.01), sku
    assert {s["sku"]: s["sold"] for s in stock["skus"] if s["sold"]} == want["sku_units"]
    assert views["sku"]["paid_orders"] == want["paid"]
    # By leader: units per SKU, buyers, orders, amount and region per pickup point.
    got = {r["leader"]: r for r in views["leader"]["leaders"]}
    assert got.keys() == want["leaders"].keys()
    for leader, w in want["leaders"].items():
        g = got[leader]
        assert g["units"] == dict(w["units"]), leader
        assert (g["buyers"], g["orders"], g["region"]) == (len(w["buyers"]), w["orders"],
                                                           w["region"]), leader
        assert g["amount"] == pytest.approx(w["amount"], abs=0.01), leader
    # By customer: each buyer's lines, leader and region.
    customers = {r["viewer_id"]: r for r in views["customer"]["customers"]}
    assert customers.keys() == want["buyers"].keys()
    for viewer, lines in want["buyers"].items():
        c, j = customers[viewer], want["joined"].get(viewer)
        assert {line["sku"]: line["qty"] for line in c["lines"]} == dict(lines), viewer
        assert c["leader"] == ((j.leader_id if j else None) or "direct")
        assert c["region"] == ((j.region if j else None) or "")
    # The CSVs parse back to the same rows (and the command's to the endpoint's).
    assert [(r["sku"], int(r["units"]), float(r["amount"])) for r in csvs["sku"]] == [
        (r["sku"], r["units"], r["amount"]) for r in views["sku"]["skus"]]
    skus = sorted({s for r in views["leader"]["leaders"] for s in r["units"]})
    assert [(r["leader"], r["region"], int(r["buyers"]), float(r["amount"]),
             {s: int(r[s]) for s in skus if int(r[s])}) for r in csvs["leader"]] == [
        (r["leader"], r["region"], r["buyers"], r["amount"], r["units"])
        for r in views["leader"]["leaders"]]
    assert [(r["viewer_id"], r["sku"], int(r["qty"])) for r in csvs["customer"]] == [
        (c["viewer_id"], line["sku"], line["qty"]) for c in views["customer"]["customers"]
        for line in c["lines"]]
    assert parse_csv(cli.stdout) == csvs["leader"]
    # Who may read what.
    assert {k: status for k, (status, _, _) in refusals.items()} == {
        "customer by monitor": 403, "followups by monitor": 403, "leader by platform": 403,
        "sku without a token": 401, "a bad view": 400, "an unknown broadcast": 404,
        "sku by monitor": 403}
    assert all(ctype == "application/json" for _, ctype, _ in refusals.values())
    # Follow-ups: the ones in Kafka, each once, with the viewer's leader.
    mine = [f for f in kafka if f.room_id == room]
    assert len(mine) == len(want["joined"])
    rows = [(f["viewer_id"], f["segment"], f["action"], f["due_at"])
            for f in followups["followups"]]
    assert len(rows) == len(set(rows))
    assert set(rows) == {(f.viewer_id, f.segment, f.action, f.due_at) for f in mine}
    for f in followups["followups"]:
        j = want["joined"][f["viewer_id"]]
        assert f["leader"] == (j.leader_id or "direct")
    assert [(r["viewer_id"], r["segment"], r["action"], int(r["due_at"]), r["leader"])
            for r in followups_csv] == [
        (f["viewer_id"], f["segment"], f["action"], f["due_at"], f["leader"])
        for f in followups["followups"]]
    assert parse_csv(cli_followups.stdout) == followups_csv


# --- three shows of one room: the review compares -----------------------------------------


async def test_the_review_compares_three_broadcasts_each_by_its_own_metrics(
        settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A room live three evenings: each broadcast's metrics equal a recount of its own
    events, the broadcasts endpoint lists the three newest first, and the review's
    comparison equals each broadcast's own metrics."""
    room = f"thrice-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    shows: list[list[Event]] = []
    async with running(settings, workers=2) as run:
        total = 0
        # Three evenings, one after the other (each 5 simulated minutes, 10 apart).
        for i, (seed, viewers) in enumerate(((21, 120), (22, 200), (23, 160))):
            plan = showplan.plan_for(room_id=room, viewers=viewers, duration_s=10, speed=30,
                                      seed=seed, now_ms=now - (2 - i) * 600_000 - 1000)
            sent = await sender.run(plan, gateway=run.gateway_url, tokens=run.tokens,
                                    progress=False)
            assert sent.rejected == 0, sent.errors
            total += sent.events_sent
            shows.append([e for _, e in showplan.broadcast(plan)])
        deadline = time.monotonic() + 90
        while sum([(await read_stats(run.redis, room, b)).get("events", 0)
                   for b in range(3)]) < total:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        host = run.tokens.for_role("host")
        base = f"{run.gateway_url}/v1/rooms/{room}"
        starts = [min(e.ts for e in events if isinstance(e, BroadcastStarted))
                  for events in shows]
        for events, start in zip(shows, starts, strict=True):
            # The last batch's presence and engagement scripts, waited for.
            await metrics_settled(f"{base}/metrics?broadcast={room}@{start}",
                                  metrics_recount(events), token=host)
        latest = orjson.loads(await get_ok(f"{base}/metrics", token=host))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics?broadcast={room}@1",
                                   headers={"Authorization": f"Bearer {host}"}) as resp:
                unknown = resp.status
            async with session.get(f"{base}/broadcasts") as resp:
                anonymous = resp.status
        listing = orjson.loads(await get_ok(f"{base}/broadcasts", token=host))["broadcasts"]
        metrics = [orjson.loads(await get_ok(f"{base}/metrics?broadcast={b['broadcast_id']}",
                                             token=host)) for b in listing]  # newest first
        env = {**os.environ, **to_env(run.settings)}
        out = tmp_path_factory.mktemp("review") / "report.html"
        done = subprocess.run([sys.executable, "-m", "stream", "report", room, "--json",
                               "--out", str(out)], env=env, capture_output=True, timeout=60,
                              check=True)
        first = subprocess.run([sys.executable, "-m", "stream", "report", room, "--json",
                                "--broadcast", listing[-1]["broadcast_id"]], env=env,
                               capture_output=True, timeout=60, check=True)
    assert listing == [{"broadcast_id": f"{room}@{start}", "started_at": start,
                        "ended_at": max(e.ts for e in events)}
                       for events, start in zip(shows[::-1], starts[::-1], strict=True)]
    assert latest["broadcast_id"] == listing[0]["broadcast_id"]
    assert (unknown, anonymous) == (404, 401)  # host data: a host or monitor token
    # Each broadcast on its own books: its metrics are a recount of its own events.
    for events, m in zip(shows[::-1], metrics, strict=True):
        want, t = metrics_recount(events), m["totals"]
        for key in ("joins", "likes", "comments", "cart_clicks", "orders", "paid", "buyers",
                    "viewers", "online", "payment_failed"):
            assert t[key] == want[key], key
        assert t["gmv"] == pytest.approx(want["gmv"], abs=0.01)
        assert t["avg_watch_s"] == pytest.approx(want["avg_watch_s"], abs=0.11)
        for point in m["series"]:
            minute = want["minutes"].get(point["t"] // 60_000, {})
            for key in ("joins", "orders", "paid", "cart_clicks"):
                assert point[key] == minute.get(key, 0), (point["t"], key)
    review = orjson.loads(done.stdout)
    c = review["comparison"]
    assert [f["broadcast_id"] for f in [c["this"], *c["baseline"]]] == [
        b["broadcast_id"] for b in listing]
    assert c["previous"] == c["baseline"][0]

    def figures(m: dict[str, Any]) -> dict[str, Any]:
        t = m["totals"]
        tv = sum(n["treatment_viewers"] for n in m["nudges"])
        hv = sum(n["holdout_viewers"] for n in m["nudges"])
        uplift = (sum(n["treatment_converted"] for n in m["nudges"]) / tv
                  - sum(n["holdout_converted"] for n in m["nudges"]) / hv) if tv and hv else None
        return {"gmv": t["gmv"], "orders": t["orders"], "conversion": t["conversion_rate"],
                "gpm": t["gpm"], "avg_watch_s": t["avg_watch_s"], "peak_online": t["peak"],
                "new_viewers": t["new_viewers"], "nudge_uplift": uplift}

    want = [figures(m) for m in metrics]
    assert metrics[0]["totals"]["orders"] > 3 and want[0] != want[1]  # real, different shows
    for got, expected in zip([c["this"], *c["baseline"]], want, strict=True):
        for kpi, value in expected.items():
            assert got[kpi] == pytest.approx(value, abs=1e-4), kpi
    for change in c["changes"]:
        kpi = change["kpi"]
        this, prev = want[0][kpi], want[1][kpi]
        past = [w[kpi] for w in want[1:] if w[kpi] is not None]
        median = statistics.median(past) if past else None
        assert change["this"] == pytest.approx(this, abs=1e-4), kpi
        assert change["previous"] == pytest.approx(prev, abs=1e-4), kpi
        assert change["median"] == pytest.approx(median, abs=1e-4), kpi
        if this is not None and prev is not None:
            assert change["vs_previous"] == ("up" if this > prev else
                                             "down" if this < prev else "same"), kpi
    # The first show has nothing before it.
    assert orjson.loads(first.stdout)["comparison"]["baseline"] == []

    reason = browser_missing()
    if reason is not None:
        pytest.skip(f"comparison checked as JSON; {reason}")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(out.as_uri())
            cells = await page.locator("#compare tbody tr").count()
            arrows = await page.locator("#compare .up, #compare .down").count()
            await page.screenshot(path=str(screenshots_dir(tmp_path_factory) / "report.png"),
                                  full_page=True)
        finally:
            await browser.close()
    assert cells == 8 and arrows > 0
