"""Run every benchmark 3 times, round after round, and write one table: `make bench`.

    .venv/bin/python bench/run.py [--out bench/results] [--only inventory,fanout]
                                  [--runs 3] [--readme README.md]

Each script runs as its own process with `--json FILE` (each starts its own fresh
embedded stack); this collects the figures into `results.json` and `results.md`, with
the machine they came from. Every ratio is against a raw baseline measured in the
same script run, on the same machine, so running a script again also runs its baseline
again: the runs alternate (inventory, viewer engine, fan-out, then again), and one
noisy minute does not land on all three runs of one script.

One run says little: the same commit on the same machine spread by about +-15% from
run to run (issue 19). So every figure is the median of the runs (`KEY` and
`KEY_median`), with the spread beside it (`KEY_min`, `KEY_max`); the table shows the
median with the spread in brackets, and a median that misses its target is marked.
A run that fails is reported in the table and makes the exit code 1; the others
still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
Row = tuple[str, str, str, str, str, str]  # what, result, baseline, ratio, target, verdict

# name -> (script, extra args, timeout in seconds). The whole set stays under 15 minutes
# on 2 cores; budgets are generous so a busy machine shows as a slow figure, not a hang.
SCRIPTS: dict[str, tuple[str, list[str], int]] = {
    "inventory": ("inventory.py", ["--cluster", "3"], 300),
    "viewer_engine": ("viewer_engine.py", [], 240),
    # 50,000 subscribers plus the raw baseline and a connect storm: the heaviest one.
    "fanout": ("fanout.py", [], 900),
}
# `--quick`: tiny sizes that only prove the scripts and this table still work (tests).
QUICK: dict[str, list[str]] = {
    "inventory": ["--orders", "2000", "--seconds", "2", "--cluster", "3"],
    "viewer_engine": ["--viewers", "300", "--minutes", "5"],
    "fanout": ["--clients", "200", "--rounds", "2", "--storm", "200"],
}


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def aggregate(runs: list[dict]) -> dict:
    """One script's runs as one set of figures: each numeric figure's median (the lower
    middle one for an even count: always a measured value) under its own key and as
    `KEY_median`, its spread as `KEY_min` and `KEY_max`; every run's own figures stay
    in `each_run`. Other values (and a figure missing from some run) are the last run's.
    """
    out = dict(runs[-1])
    for key in runs[-1]:
        values = [run.get(key) for run in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            median = statistics.median_low(values)
            out[key] = out[f"{key}_median"] = median
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    out["run_count"] = len(runs)
    out["each_run"] = runs
    return out


def spread(f: dict, key: str, fmt: str = "{:,}") -> str:
    """`KEY`'s median, and its spread over the runs when they differ: "0.58 (0.55–0.64)"."""
    text = fmt.format(f.get(f"{key}_median", f[key]))
    low, high = f.get(f"{key}_min"), f.get(f"{key}_max")
    if low is not None and high is not None and low != high:
        text += f" ({fmt.format(low)}–{fmt.format(high)})"
    return text


# The issue-19 target: the coalescing interval is the floor of the p99 (an order just
# after an update waits for the next one), and the pipeline may add at most 15 ms.
LATENCY_OVER_INTERVAL_MS = 15
# Issue 19's ratios, raised from the first wave's 0.5 (hot SKU) and 0.2 (viewer path).
HOT_SKU_RATIO = 0.7
VIEWER_PATH_RATIO = 0.3


def inventory_rows(f: dict) -> list[Row]:
    interval = f.get("stock_interval_ms", 100)
    p99_limit = interval + LATENCY_OVER_INTERVAL_MS
    return [
        ("hot-SKU reservations: gateway → Kafka → worker → Redis → `lc.order-results`",
         f"{spread(f, 'full_path_reservations_per_s')} orders/s",
         f"{spread(f, 'raw_evalsha_per_s')}/s raw pipelined EVALSHA, one call per order",
         spread(f, "ratio", "{:.2f}"), f"≥ {HOT_SKU_RATIO}", _met(f["ratio"] >= HOT_SKU_RATIO)),
        (f"end-to-end: 202 → SSE `stock` event, {f['latency_rate_per_s']:,} orders/s on one "
         f"SKU, coalesced to one update per {interval} ms",
         f"p50 {spread(f, 'latency_p50_ms')} ms, p99 {spread(f, 'latency_p99_ms')} ms",
         "—", "—", f"p99 ≤ {p99_limit} ms (interval + {LATENCY_OVER_INTERVAL_MS})",
         _met(f["latency_p99_ms"] <= p99_limit)),
        *cluster_rows(f),
    ]


def cluster_rows(f: dict) -> list[Row]:
    """The hot SKU's script on N cluster masters against one node (`--cluster N`)."""
    if "cluster_masters" not in f:
        return []
    n = f["cluster_masters"]
    return [
        (f"hot SKU, inventory script (500 orders a call) on {n} cluster masters: the SKU "
         f"in one slot / split into {n} stock buckets on {n} masters",
         f"{spread(f, 'script_cluster_one_slot_per_s')} / "
         f"{spread(f, 'script_cluster_buckets_per_s')} orders/s",
         f"{spread(f, 'script_single_node_per_s')}/s on 1 node, same run",
         spread(f, "cluster_speedup", "{:.2f}"), "> 1 with buckets",
         _met(f["cluster_speedup"] > 1)),
        (f"the same {n} buckets with WAIT 1 after every call "
         "(LIVECOMMERCE_REDIS_WAIT_REPLICAS=1)",
         f"{spread(f, 'script_cluster_buckets_wait1_per_s')} orders/s",
         f"{spread(f, 'script_cluster_buckets_per_s')}/s without WAIT",
         f"{1 - f['wait1_cost']:.2f}", "—", "measured"),
    ]


def viewer_engine_rows(f: dict) -> list[Row]:
    # The worker's CPU per event beside the rate (results of before session 21 lack it).
    cpu = (f"; worker CPU {spread(f, 'worker_cpu_us_per_event', '{:.1f}')} us an event, "
           f"its main thread {spread(f, 'main_thread_cpu_us_per_event', '{:.1f}')} us "
           f"(busy {spread(f, 'main_thread_busy', '{:.2f}')} of the time)"
           if f.get("main_thread_cpu_us_per_event") is not None else "")
    return [
        ("viewer events through the whole worker, envelopes of 500",
         f"{spread(f, 'worker_events_per_s')} events/s{cpu}",
         f"{spread(f, 'raw_aiokafka_records_per_s')} records/s bare aiokafka consumer",
         spread(f, "ratio", "{:.3f}"), f"≥ {VIEWER_PATH_RATIO}",
         _met(f["ratio"] >= VIEWER_PATH_RATIO)),
        ("viewer state per viewer (msgpack in Redis)",
         f"mean {spread(f, 'state_bytes_per_viewer_mean')} B, "
         f"max {spread(f, 'state_bytes_per_viewer_max')} B",
         "—", "—", "≤ 1 KB", _met((f.get("state_bytes_per_viewer_max_max")
                                   or f["state_bytes_per_viewer_max"] or 0) <= 1024)),
    ]


def fanout_rows(f: dict) -> list[Row]:
    asked = f.get("asked_clients", f["clients"])
    # Every run must deliver everything (a lost update is no noise): the worst run counts.
    received = f.get("received_min", f["received"])
    ok = (f["p99_ms"] is not None and f["p99_ms"] <= 500 and received == f["expected"]
          and f.get("clients_min", f["clients"]) >= asked)
    short = ("" if f["clients"] >= asked else
             f" ({asked:,} asked: the open-file limit here is {f['open_file_limit']:,})")
    rows = [
        (f"fan-out: one stock change to {f['clients']:,} subscribers of one room on one "
         f"gateway ({f['ws']:,} WebSocket, {f['sse']:,} SSE), {f['rounds']} rounds{short}",
         f"p50 {spread(f, 'p50_ms')} ms, p99 {spread(f, 'p99_ms')} ms, max "
         f"{spread(f, 'max_ms')} ms; received {received:,}/{f['expected']:,}",
         f"p99 {spread(f, 'raw_p99_ms')} ms bare asyncio server, same bytes and clients",
         spread(f, "ratio", "{:.2f}") if f["ratio"] is not None else "—",
         f"{asked:,} subscribers, p99 ≤ 500 ms, all received", _met(ok)),
    ]
    if f.get("connects_per_s") is not None:
        # The same crowd against the bare server (101 + a snapshot frame): the ceiling of
        # the load generator here; older results only had the fan-out clients' rate.
        raw_key = ("raw_storm_connects_per_s" if f.get("raw_storm_connects_per_s")
                   else "raw_connects_per_s")
        raw = f.get(raw_key)
        cpu = (f"; gateway CPU {spread(f, 'storm_cpu_us')} us per connect (bare server "
               f"{spread(f, 'raw_storm_cpu_us')} us)" if f.get("storm_cpu_us") else "")
        ratio = (spread(f, "storm_ratio", "{:.2f}") if f.get("storm_ratio")
                 else f"{f['connects_per_s'] / raw:.2f}" if raw else "—")
        rows.append((
            f"connect storm: {f['storm']:,} new WebSocket subscribers at once "
            f"(snapshots from the hub's room cache)",
            f"connects_per_s {spread(f, 'connects_per_s')} (median {f['storm_s']} s); "
            f"Redis snapshot reads {spread(f, 'storm_redis_reads', '{:.0f}')}{cpu}",
            f"{spread(f, raw_key)}/s, the same storm on the bare asyncio server"
            if raw else "—",
            ratio, "≥ 5,000/s", _met(f["connects_per_s"] >= 5000)))
    return rows


ROWS: dict[str, Callable[[dict], list[Row]]] = {
    "inventory": inventory_rows, "viewer_engine": viewer_engine_rows, "fanout": fanout_rows}


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "load_before": round(os.getloadavg()[0], 2), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_one(name: str, tmp: Path, *, quick: bool, run: int = 1,
            runs: int = 1) -> tuple[dict | None, float, str]:
    script, extra, timeout = SCRIPTS[name]
    extra = QUICK[name] if quick else extra
    out = tmp / f"{name}-{run}.json"
    started = time.monotonic()
    print(f"== {name} (run {run} of {runs}): bench/{script} {' '.join(extra)}", flush=True)
    try:
        proc = subprocess.run([sys.executable, str(HERE / script), "--json", str(out), *extra],
                              cwd=HERE.parent, timeout=timeout, check=False)
        error = "" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout} s"
    seconds = time.monotonic() - started
    if error or not out.exists():
        return None, seconds, error or "wrote no figures"
    return json.loads(out.read_text()), seconds, ""


def markdown(rows: list[Row], info: dict[str, object], seconds: float, *,
             runs: int = 1) -> str:
    each = (f"Each figure is the median of {runs} runs (the spread, min–max, in brackets); "
            f"a median that misses its target is marked. " if runs > 1 else "")
    lines = [f"Measured {info['date']} on {info['cores']} cores ({info['cpu']}), "
             f"Python {info['python']}, {info['os']}, commit {info['commit'] or '?'}, "
             f"load average {info['load_before']} before the run"
             f"{_loads(info)}; {seconds:.0f} s in all. {each}".rstrip(),
             "",
             "| benchmark | result | baseline in the same run | ratio | target | |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _loads(info: dict[str, object]) -> str:
    loads = info.get("load_each_run")
    return f" ({', '.join(map(str, loads))} before each run)" if isinstance(loads, list) else ""


README_BLOCK = re.compile(r"(<!-- bench-results -->\n).*?(\n<!-- /bench-results -->)", re.S)


def update_readme(path: Path, table: str) -> None:
    """Put `table` between the README's `bench-results` markers (the latest run)."""
    text = path.read_text()
    if not README_BLOCK.search(text):
        raise SystemExit(f"{path}: no <!-- bench-results --> block to update")
    path.write_text(README_BLOCK.sub(lambda m: m[1] + table.strip() + m[2], text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="writes OUT.json and OUT.md")
    parser.add_argument("--only", default=",".join(SCRIPTS),
                        help=f"comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that everything runs, measures nothing")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each script, alternating (--quick: 1)")
    parser.add_argument("--readme", type=Path,
                        help="also put the table in this file's bench-results block")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCRIPTS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    runs = 1 if args.quick else args.runs
    info = machine()
    started = time.monotonic()
    loads: list[float] = []
    done: dict[str, list[dict]] = {name: [] for name in names}
    log: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="lc-bench-run-") as tmp:
        # Round after round: a busy minute on the shared machine hits one run of each
        # script, not every run of one.
        for run in range(1, runs + 1):
            for name in names:
                load = round(os.getloadavg()[0], 2)
                loads.append(load)
                figures, seconds, error = run_one(name, Path(tmp), quick=args.quick,
                                                  run=run, runs=runs)
                log[name].append({"run": run, "seconds": round(seconds, 1),
                                  "load_before": load, "error": error or None})
                if figures is not None:
                    done[name].append(figures)
    if runs > 1:
        info["load_each_run"] = loads
    results: dict[str, object] = {}
    rows: list[Row] = []
    failed = False
    for name in names:
        errors = [f"run {entry['run']}: {entry['error']}" for entry in log[name]
                  if entry["error"]]
        figures = aggregate(done[name]) if done[name] else None
        results[name] = {"seconds": round(sum(e["seconds"] for e in log[name]), 1),
                         "error": "; ".join(errors) or None, "runs": log[name],
                         "figures": figures}
        if errors:
            failed = True
            rows.append((name, f"FAILED: {'; '.join(errors)}", "—", "—", "—", "**failed**"))
        if figures is not None:
            rows += ROWS[name](figures)
    total = time.monotonic() - started
    table = markdown(rows, info, total, runs=runs)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "seconds": round(total, 1), "benchmarks": results}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print()
    print(table)
    print(f"written: {args.out.with_suffix('.md')}, {args.out.with_suffix('.json')}")
    if args.readme is not None and not failed and not args.quick and set(names) == set(
            SCRIPTS):
        update_readme(args.readme, table)
        print(f"updated: {args.readme}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
