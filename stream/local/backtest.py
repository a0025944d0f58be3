"""`livecommerce rules backtest`: a past broadcast under candidate rules, beside the
running ones. Reads the events (Kafka input topics or a file), replays them through the
pure engine twice (`stream.engine.replay`), and writes nothing anywhere."""

from __future__ import annotations

from pathlib import Path

import msgspec

from stream.core.config import Settings
from stream.engine.replay import Broadcast, RuleOutcome, outcomes, replay, select
from stream.engine.rules import load_dir
from stream.local.eventlog import from_file, from_kafka
from stream.worker.engagement import GRACE_MS


class Side(msgspec.Struct, frozen=True, kw_only=True):
    rules_dir: str
    digest: str
    rules: list[RuleOutcome]


class BacktestReport(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    broadcast: Broadcast
    events: int  # of the broadcast, as replayed
    source: str  # "kafka" or the file
    running: Side
    candidate: Side


async def backtest(settings: Settings, *, room_id: str, broadcast: str | None = None,
                   rules_dir: Path | None = None, events_file: Path | None = None,
                   ) -> BacktestReport:
    """Raises RuleError for a bad rule directory, ValueError for a bad file or broadcast."""
    running_dir = settings.rules_dir
    candidate_dir = rules_dir if rules_dir is not None else running_dir
    running, candidate = load_dir(running_dir), load_dir(candidate_dir)
    if events_file is not None:
        events, source = from_file(events_file, room_id=room_id), str(events_file)
    elif not settings.kafka_url:
        raise ValueError("--events: needed without LIVECOMMERCE_KAFKA_URL (an embedded "
                         "stack's broker, and its log, stop with it)")
    else:
        events, source = await from_kafka(settings, room_id=room_id), "kafka"
    chosen, mine, since = select(events, room_id=room_id, broadcast=broadcast)
    sides = []
    for directory, rules in ((running_dir, running), (candidate_dir, candidate)):
        effects = replay(mine, room_id=room_id, rules=rules, grace_ms=GRACE_MS, since=since,
                         presence_timeout_ms=settings.presence_timeout_s * 1000)
        sides.append(Side(rules_dir=str(directory), digest=rules.digest,
                          rules=outcomes(effects, rules=rules)))
    return BacktestReport(room_id=room_id, broadcast=chosen, events=len(mine), source=source,
                          running=sides[0], candidate=sides[1])


def format_text(report: BacktestReport) -> str:
    """Per rule, what it would send and suppress by reason, running beside candidate."""
    b = report.broadcast
    lines = [f"room {report.room_id}, broadcast {b.broadcast_id} "
             f"({report.events} events from {report.source})",
             f"running rules {report.running.rules_dir} ({report.running.digest}) "
             f"vs candidate {report.candidate.rules_dir} ({report.candidate.digest})"]
    run = {r.rule_id: r for r in report.running.rules}
    cand = {r.rule_id: r for r in report.candidate.rules}
    width = max([len(r) for r in run | cand] + [4])
    lines.append(f"{'rule':<{width}}  {'':9}  {'sent':>5}  {'held':>5}  suppressed by reason")
    for rule_id in sorted(run | cand):
        for label, side in (("running", run), ("candidate", cand)):
            o = side.get(rule_id)
            if o is None:
                lines.append(f"{rule_id:<{width}}  {label:9}  {'(not in these rules)'}")
                continue
            reasons = ", ".join(f"{k} {v}" for k, v in o.suppressed.items()) or "-"
            lines.append(f"{rule_id:<{width}}  {label:9}  {o.sent:>5}  {o.held_out:>5}  "
                         f"{reasons}")
    return "\n".join(lines)
