"""A new user's path, exactly, from a checkout with no variable set by hand:
`make demo` → `.venv/bin/livecommerce demo --keep` → the printed dashboard URL in a
browser → `.venv/bin/livecommerce report ROOM --out report.html` →
`.venv/bin/livecommerce check ROOM` → Ctrl-C."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from newcomer import READY, background, checkout, shell, user_env

pytestmark = pytest.mark.integration


async def _open_dashboard(url: str) -> dict[str, str]:
    """The dashboard at `url` (token in the fragment) once it shows data."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(url)
            await page.wait_for_function(
                "Number(document.body.dataset.updates) >= 1 && "
                "!['–', '0'].includes(document.getElementById('kpi-orders').textContent)",
                timeout=60_000)
            shown: dict[str, str] = await page.evaluate(
                "() => Object.fromEntries(['room', 'kpi-orders', 'kpi-gmv', 'kpi-viewers']"
                ".map((id) => [id, document.getElementById(id).textContent]))")
            return shown
        finally:
            await browser.close()


async def test_a_new_users_path(tmp_path: Path) -> None:
    require_browser()
    view = checkout(tmp_path)
    env = user_env()
    # The stamp is the venv's install: taken as done, as after a first `make demo`
    # (the venv is the one running these tests and must not be reinstalled from here).
    # Its show is 5 s instead of 30: `demo --keep` below runs the default show (and exits
    # 1 on anything lost or oversold, as `demo` does), so a second full show here would
    # only add ~25 s to the suite.
    # `--json` here stands for `demo --json`'s own test (a third show cost 17 s).
    first = shell('make -o .venv/.installed demo DEMO_ARGS="--duration 5 --json"', cwd=view,
                  env=env, timeout_s=240)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "demo --keep" in first.stdout and "dashboard" in first.stdout, first.stdout
    [summary] = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert summary["events_sent"] > 100
    assert summary["events_processed"] == summary["events_sent"] - summary["dead_letters"]
    assert summary["orders"] > 0 and summary["gmv"] > 0 and summary["oversold"] == 0

    with background([".venv/bin/livecommerce", "demo", "--keep"], cwd=view, env=env) as demo:
        demo.wait_for(READY, timeout_s=240)
        dashboard = demo.value("dashboard")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard/demo-room#token=\S+",
                            dashboard), dashboard
        assert demo.value("viewer").endswith("/live/demo-room")
        orders = int(demo.value("orders"))
        assert orders > 0

        shown = await _open_dashboard(dashboard)
        assert shown["room"] == "demo-room", shown
        assert int(shown["kpi-orders"].replace(",", "")) == orders, shown

        report = shell(".venv/bin/livecommerce report demo-room --out report.html",
                       cwd=view, env=env)
        assert report.returncode == 0, report.stderr
        assert "<svg" in (view / "report.html").read_text(encoding="utf-8")
        check = shell(".venv/bin/livecommerce check demo-room", cwd=view, env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "demo-room: 5 skus, oversold 0, ok" in check.stdout
        state = json.loads((view / ".livecommerce" / "up.json").read_text())
        assert state["dashboard_url"] == dashboard

        assert demo.interrupt() == 0, demo.output
    assert not (view / ".livecommerce" / "up.json").exists()
