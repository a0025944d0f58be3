"""The browser the dashboard and review tests drive, and the rule for skipping them.

A missing browser fails those tests: CI without chromium must not pass without ever
opening the dashboard. They skip only when asked (`LC_SKIP_BROWSER=1`), and the end of
the run says so (tests/conftest.py, `pytest_terminal_summary`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a container; playwright adds --headless and a fresh --user-data-dir.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SKIP_ASKED = "LC_SKIP_BROWSER=1"


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return (f"no browser: {CHROMIUM} is missing (Debian package `chromium`; `make test` "
                "installs it when run as root with apt-get)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "no browser driver: the `playwright` Python package is not installed"
    return None


def require_browser(what: str = "") -> None:
    """Skip when asked to, fail when the browser is missing, else return."""
    if os.environ.get("LC_SKIP_BROWSER") == "1":
        pytest.skip(f"{SKIP_ASKED}: browser test skipped on request{what and '; ' + what}")
    reason = browser_missing()
    if reason is not None:
        pytest.fail(f"{reason}; run with {SKIP_ASKED} to skip the browser tests on purpose",
                    pytrace=False)
