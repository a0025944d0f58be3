"""The `rules` commands: check the rule files, and backtest candidate rules on a past
broadcast."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import msgspec

from stream.cli.common import load_settings


@click.group()
def rules() -> None:
    """Nudge, tag and follow-up rules (`rules/*.toml`)."""


@rules.command("check")
@click.argument("directory", required=False, type=click.Path())
def rules_check(directory: str | None) -> None:
    """Validate the rule files in DIRECTORY (default: LIVECOMMERCE_RULES_DIR or ./rules)."""
    from stream.engine.rules import RuleError
    from stream.local.rulecheck import rule_lines
    from stream.worker.rulewatch import load_rules

    path = Path(directory) if directory is not None else load_settings().rules_dir
    try:
        loaded = load_rules(path)
    except RuleError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    lines, warnings = rule_lines(path, loaded)
    for line in lines:
        click.echo(line)
    for warning in warnings:
        click.echo(warning, err=True)
    click.echo(f"ok (digest {loaded.digest})")


@rules.command("backtest")
@click.option("--room", required=True, help="The room whose broadcast to replay.")
@click.option("--broadcast", default=None, help="Its id (ROOM@START_MS); default the latest.")
@click.option("--rules", "rules_dir", type=click.Path(file_okay=False), default=None,
              help="Candidate rules (default: the running LIVECOMMERCE_RULES_DIR).")
@click.option("--events", "events_file", type=click.Path(dir_okay=False), default=None,
              help="NDJSON of input events instead of the Kafka input topics.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line.")
def rules_backtest(room: str, broadcast: str | None, rules_dir: str | None,
                   events_file: str | None, as_json: bool) -> None:
    """Replay a past broadcast under candidate rules beside the running ones (writes nothing)."""
    from pathlib import Path

    from stream.engine.rules import RuleError
    from stream.local.backtest import backtest, format_text

    try:
        report = asyncio.run(backtest(
            load_settings(), room_id=room, broadcast=broadcast,
            rules_dir=Path(rules_dir) if rules_dir else None,
            events_file=Path(events_file) if events_file else None))
    except (RuleError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(msgspec.json.encode(report).decode() if as_json else format_text(report))


__all__ = ["rules"]
