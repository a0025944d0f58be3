"""`make bench`'s runner and the fan-out benchmark still run end to end (tiny sizes: this
checks they work, it measures nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_bench_runner_collects_the_fanout_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--only", "fanout",
                          "--out", str(out)], capture_output=True, text=True, timeout=240,
                         check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(out.with_suffix(".json").read_text())
    figures = results["benchmarks"]["fanout"]["figures"]
    # Every subscriber, WebSocket and SSE alike, got every round's change.
    assert figures["ws"] > 0 and figures["sse"] > 0
    assert figures["received"] == figures["expected"] == 200 * 2
    assert figures["raw_received"] == figures["expected"]
    # The connect storm: all 200 served, their snapshots from the room cache (the first
    # connect fills it: one read).
    assert figures["storm"] == 200 and figures["connects_per_s"] > 0
    assert figures["storm_redis_reads"] == 1
    assert results["machine"]["cores"] >= 1
    table = out.with_suffix(".md").read_text()
    assert "fan-out" in table and "200 subscribers" in table
    assert "connect storm" in table and "connects_per_s" in table


def test_latency_stages_times_every_request(tmp_path: Path) -> None:
    out = tmp_path / "stages.json"
    run = subprocess.run([sys.executable, str(BENCH / "latency_stages.py"), "--rate", "200",
                          "--seconds", "1", "--json", str(out)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = json.loads(out.read_text())
    # 200 orders in requests of 2, each timed at every stage.
    assert figures["requests"] == 100
    for stage in ("post_to_202", "202_to_result", "result_to_channel", "channel_to_sse"):
        assert 0 <= figures[f"{stage}_p50_ms"] <= figures[f"{stage}_p99_ms"]
    # The stock update cannot reach a screen before the result it follows was written.
    assert figures["202_to_sse_p50_ms"] >= figures["202_to_result_p50_ms"]
