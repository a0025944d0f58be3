"""`bench/locustfile.py` runs headless against a live gateway with no failures (so it
cannot rot as the API moves)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import msgspec
import pytest

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.local.runner import running

pytestmark = pytest.mark.integration

LOCUSTFILE = Path(__file__).resolve().parents[2] / "bench" / "locustfile.py"
LOCUST = Path(sys.executable).with_name("locust")


async def test_locustfile_runs_without_failures(settings: Settings) -> None:
    # No worker: the gateway answers on its own, and this is about the file, not capacity.
    async with running(settings, workers=0) as run:
        proc = await asyncio.create_subprocess_exec(
            str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "20", "-r", "20",
            "-t", "6s", "--host", run.gateway_url, "--json", "--skip-log",
            env={**os.environ, "LIVECOMMERCE_TOKENS_FILE": str(run.settings.tokens_file),
                 "LOCUST_ROOM": "locust-test"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = {row["name"]: row for row in json.loads(out)}
    assert sum(r["num_requests"] for r in rows.values()) > 0
    assert {n: r["num_failures"] for n, r in rows.items() if r["num_failures"]} == {}
    # Every kind of user got through: viewers, buyers (commerce token), SSE watchers.
    for name in ("viewer.joined", "viewer.heartbeat", "order.placed", "viewer.left",
                 "stock/stream (snapshot)"):
        assert rows.get(name, {}).get("num_requests", 0) > 0, name


async def test_up_writes_its_tokens_where_the_tokens_file_points(settings: Settings,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    settings = msgspec.structs.replace(settings, tokens_file=path)
    async with running(settings, workers=0) as run:
        assert run.settings.tokens_file == path
        first = run.tokens.for_role("commerce")
    assert Tokens.load(path).role(first) == "commerce"
    async with running(settings, workers=0) as run:  # an existing file is used as it is
        assert run.tokens.for_role("commerce") == first
