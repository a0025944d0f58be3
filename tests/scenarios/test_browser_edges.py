"""Trust at the edges in a real browser (headless Chromium): a brand page on a listed
origin reads the stock JSON and the SSE stream, a page on another origin cannot (the
test reads Chromium's own CORS error), and the dashboard shows numbers only once
signed in (`#token=` or the form)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from browser import CHROMIUM, require_browser
from helpers import running_gateway
from redis.asyncio import Redis

from stream.core.config import Settings
from stream.core.models import StockUpdate
from stream.local.embedded import free_port
from stream.store import keys

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _browser() -> None:
    require_browser()  # fails without chromium; skips only with LC_SKIP_BROWSER=1

# The flags the brief names: headless, no sandbox (root in a container), no GPU, quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking"]

# A brand's live-room page: reads the stock JSON, then the SSE stream (the snapshot and
# one `stock` event), and reports what it got or the error it met.
BRAND_PAGE = """<!doctype html><meta charset="utf-8"><title>brand</title><script>
const gw = new URLSearchParams(location.search).get("gw");
const room = new URLSearchParams(location.search).get("room");
window.result = {stock: null, snapshot: null, update: null, errors: []};
fetch(`${gw}/v1/rooms/${room}/stock`).then((r) => r.json())
  .then((j) => { window.result.stock = j; })
  .catch((e) => { window.result.errors.push(`fetch: ${e}`); window.result.stock = false; });
const es = new EventSource(`${gw}/v1/rooms/${room}/stock/stream`);
es.addEventListener("snapshot", (e) => { window.result.snapshot = JSON.parse(e.data); });
es.addEventListener("stock", (e) => { window.result.update = JSON.parse(e.data); es.close(); });
es.onerror = () => { window.result.errors.push("eventsource"); if (!window.result.snapshot) {
  window.result.snapshot = false; es.close(); } };
</script>"""


async def _serve_page(port: int) -> web.AppRunner:
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=BRAND_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _store(redis: Redis, update: StockUpdate) -> None:
    await redis.hset(keys.stock_prefix(update.room_id) + update.sku, mapping={
        "available": update.available, "reserved": 0, "sold": 0, "version": update.version,
        "loaded": update.available})
    await redis.sadd(keys.skus(update.room_id), update.sku)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_a_listed_origin_reads_the_stock_and_another_cannot(
        settings: Settings, redis: Redis, browser: Any) -> None:
    listed_port, other_port = free_port(), free_port()
    listed = f"http://127.0.0.1:{listed_port}"
    settings = msgspec.structs.replace(settings, cors_origins=listed)
    room = f"cors-{uuid.uuid4().hex[:8]}"
    level = StockUpdate(room_id=room, sku="rice-5kg", available=42, reserved=0, sold=0,
                        version=1, ts=int(time.time() * 1000))
    await _store(redis, level)
    pages = [await _serve_page(listed_port), await _serve_page(other_port)]
    try:
        async with running_gateway(settings) as (_, gw, _):
            # The page on the listed origin: JSON and the stream, a live update included.
            page = await browser.new_page()
            await page.goto(f"{listed}/?gw={gw}&room={room}")
            await page.wait_for_function(
                "window.result.stock !== null && window.result.snapshot !== null",
                timeout=30_000)
            got = await page.evaluate("window.result")
            assert got["errors"] == [], got
            assert got["stock"]["skus"][0]["available"] == 42
            assert got["snapshot"]["skus"][0]["sku"] == "rice-5kg"
            newer = msgspec.structs.replace(level, available=41, version=2)
            await redis.publish(keys.STOCK_CHANNEL, msgspec.json.encode([newer]))
            await page.wait_for_function("window.result.update !== null", timeout=30_000)
            assert (await page.evaluate("window.result.update"))["available"] == 41

            # The page on another origin: the browser refuses both, and says why.
            other = await browser.new_page()
            console: list[str] = []
            other.on("console", lambda msg: console.append(msg.text))
            await other.goto(f"http://127.0.0.1:{other_port}/?gw={gw}&room={room}")
            await other.wait_for_function(
                "window.result.stock === false && window.result.snapshot === false",
                timeout=30_000)
            got = await other.evaluate("window.result")
            assert got["stock"] is False and got["snapshot"] is False
            assert any(e.startswith("fetch: TypeError") for e in got["errors"]), got
            blocked = [m for m in console if "blocked by CORS policy" in m]
            assert any(f"/v1/rooms/{room}/stock'" in m for m in blocked), console
            assert any(f"/v1/rooms/{room}/stock/stream'" in m for m in blocked), console
            assert all("Access-Control-Allow-Origin" in m for m in blocked), blocked
    finally:
        for runner in pages:
            await runner.cleanup()


_KPIS = """() => ({orders: document.getElementById('kpi-orders').textContent,
  viewers: document.getElementById('kpi-viewers').textContent,
  signin: !document.getElementById('signin').hidden,
  error: document.getElementById('signin-error').textContent,
  updates: Number(document.body.dataset.updates), hash: location.hash})"""


async def test_the_dashboard_shows_numbers_only_signed_in(
        settings: Settings, redis: Redis, browser: Any) -> None:
    room = f"dash-{uuid.uuid4().hex[:8]}"
    await redis.hset(keys.stats(room), mapping={"orders_reserved": 7})
    async with running_gateway(settings) as (_, gw, tokens):
        # With `#token=`: numbers, no sign-in, and the token gone from the address bar.
        page = await browser.new_page()
        await page.goto(f"{gw}/dashboard/{room}#token={tokens.for_role('host')}")
        await page.wait_for_function("Number(document.body.dataset.updates) >= 1",
                                     timeout=30_000)
        seen = await page.evaluate(_KPIS)
        assert seen["orders"] == "7" and seen["viewers"] == "0"
        assert not seen["signin"] and seen["hash"] == ""

        # Without: the sign-in form, no number, and no request for the data.
        fresh = await browser.new_context()  # its own sessionStorage
        page = await fresh.new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        await page.goto(f"{gw}/dashboard/{room}")
        await page.wait_for_selector("#signin:not([hidden])", timeout=30_000)
        seen = await page.evaluate(_KPIS)
        assert seen["orders"] == "–" and seen["viewers"] == "–" and seen["updates"] == 0
        assert not [u for u in asked if "/metrics" in u], asked

        # A token of the wrong role is refused and says so; a monitor token signs in.
        await page.fill("#signin-token", tokens.for_role("platform"))
        await page.click("#signin button")
        await page.wait_for_function(
            "document.getElementById('signin-error').textContent.includes('this one is')",
            timeout=30_000)
        assert (await page.evaluate(_KPIS))["orders"] == "–"
        await page.fill("#signin-token", tokens.for_role("monitor"))
        await page.click("#signin button")
        await page.wait_for_function("Number(document.body.dataset.updates) >= 1",
                                     timeout=30_000)
        seen = await page.evaluate(_KPIS)
        assert seen["orders"] == "7" and not seen["signin"]
        await fresh.close()
