"""`make bench`'s figures that hold: several runs become medians with their spread, and
the table judges the median (the runner's own logic; no benchmark runs here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_run", module)
    spec.loader.exec_module(module)
    return module


def inventory(ratio: float, p99: float) -> dict[str, object]:
    return {"full_path_reservations_per_s": round(ratio * 30_000), "raw_evalsha_per_s": 30_000,
            "ratio": ratio, "latency_rate_per_s": 1000, "latency_p50_ms": p99 / 2,
            "latency_p99_ms": p99, "stock_interval_ms": 100, "note": f"run at {ratio}"}


def test_the_median_and_the_spread_sit_beside_each_figure() -> None:
    run = runner()
    runs = [inventory(0.62, 130.0), inventory(0.48, 110.0), inventory(0.55, 112.0)]
    f = run.aggregate(runs)
    assert (f["ratio"], f["ratio_median"], f["ratio_min"], f["ratio_max"]) == (
        0.55, 0.55, 0.48, 0.62)
    assert (f["latency_p99_ms_median"], f["latency_p99_ms_min"],
            f["latency_p99_ms_max"]) == (112.0, 110.0, 130.0)
    # Not a figure: the last run's, untouched; and every run is kept as it was.
    assert f["note"] == "run at 0.55" and "note_median" not in f
    assert f["run_count"] == 3 and f["each_run"] == runs


def test_the_table_shows_the_median_with_its_spread_and_judges_the_median() -> None:
    run = runner()
    # One run misses both targets, the median meets them.
    rows = run.inventory_rows(run.aggregate(
        [inventory(0.82, 130.0), inventory(0.68, 110.0), inventory(0.75, 112.0)]))
    (_, result, _, ratio, target, verdict), (_, latency, _, _, p99_target, p99_verdict) = rows
    assert ratio == "0.75 (0.68–0.82)" and target == "≥ 0.7" and verdict == "met"
    assert "22,500 (20,400–24,600) orders/s" in result
    assert "p99 112.0 (110.0–130.0) ms" in latency
    assert p99_target.startswith("p99 ≤ 115 ms") and p99_verdict == "met"
    # The median missing is marked.
    rows = run.inventory_rows(run.aggregate(
        [inventory(0.62, 120.0), inventory(0.68, 110.0), inventory(0.75, 117.0)]))
    assert rows[0][-1] == "**missed**" and rows[1][-1] == "**missed**"


def test_one_run_is_shown_without_a_spread() -> None:
    run = runner()
    rows = run.inventory_rows(run.aggregate([inventory(0.55, 112.0)]))
    assert rows[0][3] == "0.55"


def test_a_figure_some_run_lacks_is_not_given_a_median() -> None:
    run = runner()
    runs = [{"p99_ms": 90.0, "ratio": None}, {"p99_ms": 80.0, "ratio": 0.9}]
    f = run.aggregate(runs)
    assert f["p99_ms"] == 80.0 and f["p99_ms_max"] == 90.0  # the lower middle of two
    assert f["ratio"] == 0.9 and "ratio_median" not in f


def test_a_fanout_run_that_lost_an_update_is_marked_whatever_the_median() -> None:
    run = runner()
    base = {"clients": 100, "ws": 50, "sse": 50, "rounds": 2, "expected": 200,
            "p50_ms": 10.0, "p99_ms": 20.0, "max_ms": 30.0, "raw_p99_ms": 15.0,
            "ratio": 0.75}
    f = run.aggregate([{**base, "received": 200}, {**base, "received": 199},
                       {**base, "received": 200}])
    row = run.fanout_rows(f)[0]
    assert "received 199/200" in row[1] and row[-1] == "**missed**"
