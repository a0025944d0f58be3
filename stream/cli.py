"""The `livecommerce` command (SPEC: Interfaces / Command line)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
import msgspec

from stream.core import config
from stream.core.auth import ROLES


def _settings() -> config.Settings:
    try:
        return config.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def _until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM (the caller then stops what it started)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on uvloop where there is one: the gateway's fan-out to 10,000
    sockets is event-loop bound, and uvloop's loop costs about half of asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(coro)
    else:
        uvloop.run(coro)


@click.group()
def main() -> None:
    """Real-time stream processing for live-commerce broadcasts."""


@main.command()
@click.option("--http-port", type=int, default=None, help="Gateway port (default: a free one).")
@click.option("--workers", type=int, default=1, show_default=True)
def up(http_port: int | None, workers: int) -> None:
    """Embedded broker + Redis + workers + gateway, until Ctrl-C."""
    from stream.local.runner import running

    async def serve() -> None:
        async with running(_settings(), workers=workers, http_port=http_port) as run:
            s = run.settings
            click.echo(f"gateway   {run.gateway_url}")
            click.echo(f"kafka     {s.kafka_url}")
            click.echo(f"redis     {s.redis_url}")
            click.echo(f"tokens    {s.tokens_file}")
            for role in ROLES:
                if run.tokens.has_role(role):  # a tokens file may hold no monitor token
                    click.echo(f"  {role:<9} {run.tokens.for_role(role)}")
            click.echo(f"simulate  LIVECOMMERCE_TOKENS_FILE={s.tokens_file} "
                       f"livecommerce simulate --gateway {run.gateway_url}")
            click.echo(f"dashboard {run.gateway_url}/dashboard/demo-room"
                       f"#token={run.tokens.for_role('host')}  "
                       f"(report: LIVECOMMERCE_REDIS_URL={s.redis_url} "
                       f"livecommerce report demo-room --out report.html)")
            click.echo("Ctrl-C stops everything.", err=True)
            await _until_stopped()

    _run_fast(serve())


@main.command()
@click.option("--viewers", type=int, default=300, show_default=True)
@click.option("--duration", type=float, default=30.0, show_default=True,
              help="Wall-clock seconds the simulation sends for.")
@click.option("--speed", type=float, default=20.0, show_default=True,
              help="Show time per wall time (20 = a 10-minute show in 30 s).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--http-port", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON summary line on stdout.")
def demo(viewers: int, duration: float, speed: float, seed: int, http_port: int | None,
         as_json: bool) -> None:
    """`up` plus a simulated broadcast; prints a summary and exits."""
    from stream.local.demo import run_demo

    summary = asyncio.run(run_demo(_settings(), viewers=viewers, duration_s=duration,
                                   speed=speed, seed=seed, http_port=http_port,
                                   progress=sys.stderr.isatty(),
                                   announce=not as_json))
    if as_json:
        click.echo(msgspec.json.encode(summary).decode())
    else:
        for name, value in msgspec.structs.asdict(summary).items():
            click.echo(f"{name:<17} {value}")
    lost = summary.events_sent - summary.dead_letters - summary.events_processed
    if lost or summary.oversold:
        click.echo(f"FAILED: lost={lost} oversold={summary.oversold}", err=True)
        sys.exit(1)


@main.command()
@click.option("--loglevel", default="warn", show_default=True)
def worker(loglevel: str) -> None:
    """One stream worker against the configured Kafka and Redis."""
    from stream.worker.app import run

    settings = _settings()
    if not settings.kafka_url or not settings.redis_url:
        raise click.UsageError("set LIVECOMMERCE_KAFKA_URL and LIVECOMMERCE_REDIS_URL "
                               "(or use `livecommerce up`)")
    run(settings, loglevel=loglevel)


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
def gateway(host: str) -> None:
    """One HTTP gateway against the configured Kafka and Redis."""
    from stream.core.auth import Tokens
    from stream.gateway.app import Gateway

    settings = _settings()
    if not settings.kafka_url or not settings.redis_url or settings.tokens_file is None:
        raise click.UsageError("set LIVECOMMERCE_KAFKA_URL, LIVECOMMERCE_REDIS_URL and "
                               "LIVECOMMERCE_TOKENS_FILE (or use `livecommerce up`)")

    async def serve() -> None:
        gw = Gateway(settings, Tokens.load(settings.tokens_file))  # type: ignore[arg-type]
        await gw.start(host=host)
        click.echo(f"gateway listening on {host}:{settings.http_port}", err=True)
        try:
            await _until_stopped()
        finally:
            await gw.stop()

    _run_fast(serve())


@main.command()
@click.option("--gateway", "gateway_url", required=True, help="e.g. http://127.0.0.1:8080")
@click.option("--room", default="demo-room", show_default=True)
@click.option("--viewers", type=int, default=300, show_default=True)
@click.option("--duration", type=float, default=60.0, show_default=True)
@click.option("--speed", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def simulate(gateway_url: str, room: str, viewers: int, duration: float, speed: float,
             seed: int) -> None:
    """Drive a realistic broadcast into a running system."""
    from stream.core.auth import Tokens
    from stream.local import sender, showplan

    settings = _settings()
    if settings.tokens_file is None:
        raise click.UsageError("set LIVECOMMERCE_TOKENS_FILE (printed by `livecommerce up`)")
    plan = showplan.plan_for(room_id=room, viewers=viewers, duration_s=duration, speed=speed,
                              seed=seed)
    stats = asyncio.run(sender.run(plan, gateway=gateway_url.rstrip("/"),
                                      tokens=Tokens.load(settings.tokens_file)))
    click.echo(msgspec.json.encode(stats).decode())
    if stats.rejected:
        sys.exit(1)


@main.command()
@click.argument("rooms", nargs=-1)
def check(rooms: tuple[str, ...]) -> None:
    """Verify available + reserved + sold == loaded for every SKU (all rooms by default)."""
    from redis.asyncio import Redis

    from stream.store import keys
    from stream.store.inventory import Inventory

    settings = _settings()
    if not settings.redis_url:
        raise click.UsageError("set LIVECOMMERCE_REDIS_URL")

    async def audit() -> int:
        redis = Redis.from_url(settings.redis_url)
        try:
            names = list(rooms) or sorted(r.decode() for r in await redis.smembers(keys.ROOMS))
            inventory = Inventory(redis)
            bad = 0
            for room in names:
                result = await inventory.audit(room)
                state = "ok" if not result.problems and not result.oversold else "BROKEN"
                click.echo(f"{room}: {result.skus} skus, oversold {result.oversold}, {state}")
                for problem in result.problems:
                    click.echo(f"  {problem}")
                bad += bool(result.problems or result.oversold)
            return bad
        finally:
            await redis.aclose()

    sys.exit(1 if asyncio.run(audit()) else 0)


@main.command()
@click.argument("room")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the review as an HTML page with charts.")
@click.option("--json", "as_json", is_flag=True, help="Print the review as one JSON line.")
@click.option("--broadcast", default=None,
              help="Which broadcast of ROOM (an id from /v1/rooms/ROOM/broadcasts); "
                   "default: the one on air, or the latest.")
def report(room: str, out: str | None, as_json: bool, broadcast: str | None) -> None:
    """The post-live review (复盘) of ROOM, from the live system's Redis."""
    from pathlib import Path

    from redis.asyncio import Redis

    from stream.hostview.report import render_html, review

    settings = _settings()
    if not settings.redis_url:
        raise click.UsageError("set LIVECOMMERCE_REDIS_URL")
    if out is None and not as_json:
        raise click.UsageError("give --out FILE.html, --json, or both")

    async def read() -> object:
        redis = Redis.from_url(settings.redis_url)
        try:
            return await review(redis, room, broadcast=broadcast,
                                presence_timeout_ms=settings.presence_timeout_s * 1000)
        finally:
            await redis.aclose()

    from stream.hostview.reader import UnknownBroadcast

    try:
        result = asyncio.run(read())
    except UnknownBroadcast as exc:
        raise click.BadParameter(str(exc), param_hint="--broadcast") from None
    if out is not None:
        Path(out).write_text(render_html(result), encoding="utf-8")  # type: ignore[arg-type]
        click.echo(f"wrote {out}", err=True)
    if as_json:
        click.echo(msgspec.json.encode(result).decode())


_BROADCAST_HELP = ("Which broadcast of ROOM (an id from /v1/rooms/ROOM/broadcasts); "
                   "default: the one on air, or the latest.")


def _after_show(read: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run `read(AfterShow)` against the configured Redis; a bad broadcast is a usage error."""
    from redis.asyncio import Redis

    from stream.hostview.afterreads import AfterShow
    from stream.hostview.reader import RoomReader, UnknownBroadcast

    settings = _settings()
    if not settings.redis_url:
        raise click.UsageError("set LIVECOMMERCE_REDIS_URL")

    async def run() -> Any:
        redis = Redis.from_url(settings.redis_url)
        try:
            reader = RoomReader(redis, presence_timeout_ms=settings.presence_timeout_s * 1000)
            return await read(AfterShow(redis, reader=reader))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except UnknownBroadcast as exc:
        raise click.BadParameter(str(exc), param_hint="--broadcast") from None


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell (CJK characters count as two)."""
    import unicodedata

    def width(cell: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in cell)

    widths = [max([width(h), *(width(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(c + " " * (w - width(c)) for c, w in zip(row, widths, strict=True))
                   .rstrip())


@main.command()
@click.argument("room")
@click.option("--by", type=click.Choice(["sku", "leader", "customer"]), default="sku",
              show_default=True, help="One total per product, per pickup point (团长), or "
                                      "per buyer.")
@click.option("--broadcast", default=None, help=_BROADCAST_HELP)
@click.option("--csv", "as_csv", is_flag=True, help="CSV (UTF-8 with a BOM) on stdout.")
@click.option("--json", "as_json", is_flag=True, help="The pick list as one JSON line.")
def picklist(room: str, by: str, broadcast: str | None, as_csv: bool, as_json: bool) -> None:
    """The pick list (分拣单) of ROOM's paid orders, from the live system's Redis."""
    from stream.hostview import picklist as pl

    pick = _after_show(lambda after: after.picklist(room, by=by, broadcast=broadcast))
    if as_csv:
        click.echo(pl.picklist_csv(pick), nl=False)
    elif as_json:
        click.echo(msgspec.json.encode(pick).decode())
    else:
        _print_table(pl.header(pick), pl.table(pick))
        left_out = ", ".join(f"{n} {k}" for k, n in pick.excluded.items() if n) or "none"
        click.echo(f"{pick.paid_orders} paid orders, {pick.units} units, "
                   f"{pick.amount:,.2f}; not picked: {left_out}", err=True)


@main.command()
@click.argument("room")
@click.option("--broadcast", default=None, help=_BROADCAST_HELP)
@click.option("--csv", "as_csv", is_flag=True, help="CSV (UTF-8 with a BOM) on stdout.")
def followups(room: str, broadcast: str | None, as_csv: bool) -> None:
    """ROOM's follow-ups (viewer_id, segment, action, due_at, leader) for the SCRM."""
    from stream.hostview.afterreads import FOLLOWUP_HEADER, followup_rows
    from stream.hostview.picklist import to_csv

    export = _after_show(lambda after: after.followups(room, broadcast=broadcast))
    if as_csv:
        click.echo(to_csv(FOLLOWUP_HEADER, followup_rows(export)), nl=False)
    else:
        click.echo(msgspec.json.encode(export).decode())


@main.group()
def rules() -> None:
    """Nudge, tag and follow-up rules (`rules/*.toml`)."""


@rules.command("check")
@click.argument("directory", required=False, type=click.Path())
def rules_check(directory: str | None) -> None:
    """Validate the rule files in DIRECTORY (default: LIVECOMMERCE_RULES_DIR or ./rules)."""
    from pathlib import Path

    from stream.engine.rules import FILES, RuleError
    from stream.worker.rulewatch import load_rules

    path = Path(directory) if directory is not None else _settings().rules_dir
    try:
        loaded = load_rules(path)
    except RuleError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for name in FILES:
        file = path / name
        if not file.is_file():
            click.echo(f"{file}: absent, defaults")
        elif name == "nudges.toml":
            rules_ = ", ".join(f"{r.id} v{r.version}" + ("" if r.enabled else " disabled")
                               for r in loaded.nudges)
            click.echo(f"{file}: {_count(len(loaded.nudges), 'nudge rule')} ({rules_}), "
                       f"at most {loaded.limits.per_viewer_per_hour} per viewer per hour")
        elif name == "tags.toml":
            tags = loaded.tags
            buckets = " | ".join(b.value for b in tags.watch_depth)
            keywords = ", ".join(k.id for k in tags.keyword)
            click.echo(f"{file}: watch depth {buckets}; "
                       f"{_count(len(tags.keyword), 'keyword rule')} ({keywords}); "
                       f"{_count(len(tags.private_sources), 'private source')}")
        elif name == "followups.toml":
            follow = ", ".join(f"{f.segment} +{f.after_s}s" for f in loaded.followups)
            click.echo(f"{file}: {_count(len(loaded.followups), 'follow-up')} ({follow})")
    # load_dir reads only the known names; a misnamed file would be silently ignored.
    for stray in sorted(p.name for p in path.glob("*.toml") if p.name not in FILES):
        click.echo(f"warning: {path / stray}: ignored (known files: {', '.join(FILES)})",
                   err=True)
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
            _settings(), room_id=room, broadcast=broadcast,
            rules_dir=Path(rules_dir) if rules_dir else None,
            events_file=Path(events_file) if events_file else None))
    except (RuleError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(msgspec.json.encode(report).decode() if as_json else format_text(report))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
