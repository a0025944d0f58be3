"""The `livecommerce` command (SPEC: Interfaces / Command line)."""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from stream.core import config
from stream.core.auth import ROLES

if TYPE_CHECKING:
    from stream.local.runner import Running
    from stream.local.state import UpState


def _settings() -> config.Settings:
    try:
        return config.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on uvloop where there is one: the gateway's fan-out to 10,000
    sockets is event-loop bound, and uvloop's loop costs about half of asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        _run(coro)
    else:
        _run(coro, runner=uvloop.run)


T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T],
         runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run) -> T:
    """Run `coro`; a Redis it cannot use is one line on stderr and exit code 2 (whatever
    it started is stopped on the way out), not a traceback or a hang."""
    from stream.store.connect import RedisUnusable

    try:
        return runner(coro)
    except RedisUnusable as exc:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.find_root().params.get("debug"):
            raise  # `--debug`: the traceback, as for every other known failure
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


_cluster_options = [
    click.option("--redis-cluster", type=int, default=0, metavar="N",
                 help="Embedded Redis Cluster of N masters instead of one Redis node."),
    click.option("--redis-replicas", type=int, default=0, metavar="R",
                 help="With --redis-cluster: R replicas per master."),
]


def _with_cluster_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_cluster_options):
        fn = option(fn)
    return fn


class _Cli(click.Group):
    """Known failures become one line and exit 1 (`--debug`: the traceback instead)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            from stream.local.errors import one_line

            line = _known(exc, one_line)
            if line is None or ctx.params.get("debug"):
                raise
            click.echo(f"error: {line} (--debug shows the traceback)", err=True)
            ctx.exit(1)


def _known(exc: BaseException, describe: Callable[[BaseException], str | None]) -> str | None:
    """The line for `exc` or for what caused it (a wrapped connection error)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if (line := describe(cause)) is not None:
            return line
        cause = cause.__cause__ or cause.__context__
    return None


@click.group(cls=_Cli)
@click.version_option(package_name="livecommerce", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Real-time stream processing for live-commerce broadcasts."""
    if not debug:
        # aiokafka logs each refused connect attempt (20 while a broker is looked for);
        # the one-line error at the end says it once, with what to do.
        logging.getLogger("aiokafka").addFilter(
            lambda record: not str(record.msg).startswith("Unable connect to"))


ROOM = "demo-room"


def _stop_event() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM. Installed as soon as the system is up and
    before anything is printed: a signal that arrives once the URLs are on screen then
    always stops the system the same way (exit 0), never half way through a line."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _print_system(run: Running, state: UpState, path: Path, *, room: str = ROOM,
                  out: Callable[[str], None] = click.echo) -> None:
    """The URLs and tokens, then commands that run as printed from this directory."""
    from stream.local.invoke import command
    from stream.local.state import DEFAULT_STATE

    s = run.settings
    out(f"gateway   {run.gateway_url}")
    out(f"kafka     {s.kafka_url}")
    out(f"redis     {s.redis_url}")
    out(f"tokens    {s.tokens_file}")
    for role in ROLES:
        if run.tokens.has_role(role):  # a tokens file may hold no monitor token
            out(f"  {role:<9} {run.tokens.for_role(role)}")
    out(f"state     {path}  (the commands below find this system through it)")
    out(f"dashboard {state.dashboard_url}")
    out(f"viewer    {state.viewer_url}")
    env = "" if path == DEFAULT_STATE else f"LIVECOMMERCE_STATE={shlex.quote(str(path))} "
    cli = env + command()
    out(f"simulate  {cli} simulate --room {room}")
    out(f"report    {cli} report {room} --out report.html")
    out(f"check     {cli} check {room}")


@main.command()
@click.option("--http-port", type=int, default=None,
              help="Gateway port (default: LIVECOMMERCE_HTTP_PORT if set, else a free one).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes; they share the partitions of one consumer group.")
@_with_cluster_options
def up(http_port: int | None, workers: int, redis_cluster: int,
       redis_replicas: int) -> None:
    """Embedded broker + Redis + workers + gateway, until Ctrl-C."""
    from stream.local.runner import running
    from stream.local.state import new_state, published, state_path

    async def serve() -> None:
        settings = _settings()
        async with running(settings, workers=workers, http_port=http_port,
                           redis_cluster=redis_cluster, redis_replicas=redis_replicas) as run:
            stop = _stop_event()
            path = state_path(settings)
            state = new_state(gateway_url=run.gateway_url, settings=run.settings, room=ROOM,
                              host_token=run.tokens.for_role("host"))
            with published(path, state):
                _print_system(run, state, path)
                click.echo("Ctrl-C stops everything.")
                await stop.wait()

    _run_fast(serve())


@main.command()
@click.option("--viewers", type=int, default=300, show_default=True)
@click.option("--duration", type=float, default=30.0, show_default=True,
              help="Wall-clock seconds the simulation sends for.")
@click.option("--speed", type=float, default=20.0, show_default=True,
              help="Show time per wall time (20 = a 10-minute show in 30 s).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--http-port", type=int, default=None,
              help="Gateway port (default: LIVECOMMERCE_HTTP_PORT if set, else a free one).")
@click.option("--keep", is_flag=True,
              help="Keep the system up after the show until Ctrl-C (dashboard, report).")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary line on stdout.")
@_with_cluster_options
def demo(viewers: int, duration: float, speed: float, seed: int, http_port: int | None,
         keep: bool, as_json: bool, redis_cluster: int, redis_replicas: int) -> None:
    """`up` plus a simulated broadcast; prints a summary and exits (or, with --keep,
    stays up until Ctrl-C)."""
    from stream.local.demo import Summary, run_demo
    from stream.local.state import dashboard_url, new_state, published, state_path

    settings = _settings()
    # With --json stdout holds the summary line only; what a person reads goes to stderr.
    say: Callable[[str], None] = (lambda line: click.echo(line, err=True)) if as_json \
        else click.echo

    def announce(run: Running) -> None:
        say(f"gateway   {run.gateway_url}  (viewers={viewers}, {duration:g}s at {speed:g}x = "
            f"{duration * speed / 60:.1f} min of show)")
        say(f"dashboard {dashboard_url(run.gateway_url, ROOM, run.tokens.for_role('host'))}")
        say(f"viewer    {run.gateway_url}/live/{ROOM}")

    def show(summary: Summary) -> None:
        if as_json:
            click.echo(msgspec.json.encode(summary).decode(), nl=True)
        else:
            for name, value in msgspec.structs.asdict(summary).items():
                if name != "errors" or value:
                    click.echo(f"{name:<17} {value}")
        sys.stdout.flush()

    async def after(run: Running, summary: Summary) -> None:
        show(summary)
        if not keep:
            return
        stop = _stop_event()
        path = state_path(settings)
        state = new_state(gateway_url=run.gateway_url, settings=run.settings, room=ROOM,
                          host_token=run.tokens.for_role("host"))
        with published(path, state):
            _print_system(run, state, path, out=say)
            say("The show is over; the system stays up. Ctrl-C stops everything.")
            await stop.wait()

    summary = asyncio.run(run_demo(settings, viewers=viewers, duration_s=duration,
                                   speed=speed, seed=seed, http_port=http_port,
                                   progress=sys.stderr.isatty(), room_id=ROOM,
                                   announce=announce, after=after,
                                   redis_cluster=redis_cluster, redis_replicas=redis_replicas))
    if summary.lost or summary.oversold:
        click.echo(f"FAILED: lost={summary.lost} oversold={summary.oversold}", err=True)
        sys.exit(1)


@main.command()
@click.option("--loglevel", default="warn", show_default=True,
              help="faust's own log level; the worker's status lines are always at INFO.")
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
@click.option("--port", type=int, default=None,
              help="Port to listen on (default: LIVECOMMERCE_HTTP_PORT, else 8080).")
def gateway(host: str, port: int | None) -> None:
    """One HTTP gateway against the configured Kafka and Redis."""
    from stream.core.auth import Tokens
    from stream.gateway.app import Gateway

    settings = _settings()
    if not settings.kafka_url or not settings.redis_url or settings.tokens_file is None:
        raise click.UsageError("set LIVECOMMERCE_KAFKA_URL, LIVECOMMERCE_REDIS_URL and "
                               "LIVECOMMERCE_TOKENS_FILE (or use `livecommerce up`)")
    tokens = Tokens.load(settings.tokens_file)
    if port is not None:
        settings = msgspec.structs.replace(settings, http_port=port)

    async def serve() -> None:
        gw = Gateway(settings, tokens)
        try:
            await gw.start(host=host, tune_gc=True)  # this process is the gateway's own
            stop = _stop_event()
            click.echo(f"gateway listening on {host}:{settings.http_port}", err=True)
            await stop.wait()
        finally:
            await gw.stop()

    _run_fast(serve())


@main.command()
@click.option("--gateway", "gateway_url", default=None,
              help="e.g. http://127.0.0.1:8080, or several, comma-separated (viewers are "
                   "spread over them); default: the `livecommerce up` running here.")
@click.option("--room", default=ROOM, show_default=True)
@click.option("--viewers", type=int, default=300, show_default=True)
@click.option("--duration", type=float, default=30.0, show_default=True,
              help="Wall-clock seconds the simulation sends for.")
@click.option("--speed", type=float, default=20.0, show_default=True,
              help="Show time per wall time (the default: a 10-minute show with a flash "
                   "sale, orders and nudges, in 30 s).")
@click.option("--seed", type=int, default=1, show_default=True)
def simulate(gateway_url: str | None, room: str, viewers: int, duration: float, speed: float,
             seed: int) -> None:
    """Drive a realistic broadcast into a running system; one JSON summary line (the keys
    of `demo --json`)."""
    from stream.core.auth import Tokens
    from stream.local import showplan
    from stream.local.demo import Summary
    from stream.local.demo import simulate as simulate_show
    from stream.local.state import find_system
    from stream.store.connect import connect

    system = find_system(_settings(), gateway_url=gateway_url, need_gateway=True)
    click.echo(system.describe(), err=True)
    assert system.settings.tokens_file is not None  # find_system guarantees it
    tokens = Tokens.load(system.settings.tokens_file)
    plan = showplan.plan_for(room_id=room, viewers=viewers, duration_s=duration, speed=speed,
                             seed=seed)

    async def go() -> Summary:
        url = system.settings.redis_url
        redis = await connect(url, timeout_s=system.settings.redis_connect_timeout_s) \
            if url else None
        try:
            return await simulate_show(plan, gateway_url=system.gateway_url, tokens=tokens,
                                       redis=redis, progress=sys.stderr.isatty())
        finally:
            if redis is not None:
                await redis.aclose()

    summary = asyncio.run(go())
    click.echo(msgspec.json.encode(summary).decode())
    if summary.events_rejected or summary.lost or summary.oversold:
        sys.exit(1)


@main.command()
@click.argument("rooms", nargs=-1)
def check(rooms: tuple[str, ...]) -> None:
    """Verify available + reserved + sold == loaded for every SKU (all rooms by default)."""
    from stream.local.errors import known_rooms, require_room
    from stream.local.state import find_system
    from stream.store.connect import connect
    from stream.store.inventory import Inventory

    system = find_system(_settings(), need_redis=True)
    click.echo(system.describe(), err=True)

    async def audit() -> int:
        redis = await connect(system.settings.redis_url,
                              timeout_s=system.settings.redis_connect_timeout_s)
        try:
            for room in rooms:
                await require_room(redis, room)
            names = list(rooms) or await known_rooms(redis)
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

    sys.exit(1 if _run(audit()) else 0)


_BROADCAST_HELP = ("Which broadcast of ROOM (an id from /v1/rooms/ROOM/broadcasts); "
                   "default: the one on air, or the latest.")


@main.command()
@click.argument("room")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the review as an HTML page with charts.")
@click.option("--json", "as_json", is_flag=True, help="Print the review as one JSON line.")
@click.option("--broadcast", default=None, help=_BROADCAST_HELP)
def report(room: str, out: str | None, as_json: bool, broadcast: str | None) -> None:
    """The post-live review (复盘) of ROOM, from the live system's Redis."""
    from stream.hostview.report import render_html, review
    from stream.local.errors import require_room
    from stream.local.state import find_system
    from stream.store.connect import connect

    if out is None and not as_json:
        raise click.UsageError("give --out FILE.html, --json, or both")
    system = find_system(_settings(), need_redis=True)
    click.echo(system.describe(), err=True)

    async def read() -> object:
        redis = await connect(system.settings.redis_url,
                              timeout_s=system.settings.redis_connect_timeout_s)
        try:
            await require_room(redis, room)
            return await review(redis, room, broadcast=broadcast,
                                presence_timeout_ms=system.settings.presence_timeout_s * 1000)
        finally:
            await redis.aclose()

    from stream.hostview.reader import UnknownBroadcast

    try:
        result = _run(read())
    except UnknownBroadcast as exc:
        raise click.BadParameter(str(exc), param_hint="--broadcast") from None
    if out is not None:
        Path(out).write_text(render_html(result), encoding="utf-8")  # type: ignore[arg-type]
        click.echo(f"wrote {out}", err=True)
    if as_json:
        click.echo(msgspec.json.encode(result).decode())


def _after_show(room: str, read: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run `read(AfterShow)` against the system's Redis; a bad broadcast is a usage error."""
    from stream.hostview.reader import UnknownBroadcast
    from stream.local.aftershow import read_after_show
    from stream.local.state import find_system

    system = find_system(_settings(), need_redis=True)
    click.echo(system.describe(), err=True)
    try:
        return _run(read_after_show(system.settings, room, read))
    except UnknownBroadcast as exc:
        raise click.BadParameter(str(exc), param_hint="--broadcast") from None


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
    from stream.hostview.picklist import picklist_csv
    from stream.local.aftershow import picklist_text

    pick = _after_show(room, lambda after: after.picklist(room, by=by, broadcast=broadcast))
    if as_csv or as_json:
        click.echo(picklist_csv(pick) if as_csv else msgspec.json.encode(pick).decode(),
                   nl=as_json)
    else:
        table, summary = picklist_text(pick)
        click.echo(table)
        click.echo(summary, err=True)


@main.command()
@click.argument("room")
@click.option("--broadcast", default=None, help=_BROADCAST_HELP)
@click.option("--csv", "as_csv", is_flag=True, help="CSV (UTF-8 with a BOM) on stdout.")
def followups(room: str, broadcast: str | None, as_csv: bool) -> None:
    """ROOM's follow-ups (viewer_id, segment, action, due_at, leader) for the SCRM."""
    from stream.hostview.afterreads import FOLLOWUP_HEADER, followup_rows
    from stream.hostview.picklist import to_csv

    export = _after_show(room, lambda after: after.followups(room, broadcast=broadcast))
    click.echo(to_csv(FOLLOWUP_HEADER, followup_rows(export)) if as_csv
               else msgspec.json.encode(export).decode(), nl=not as_csv)


@main.group()
def rules() -> None:
    """Nudge, tag and follow-up rules (`rules/*.toml`)."""


@rules.command("check")
@click.argument("directory", required=False, type=click.Path())
def rules_check(directory: str | None) -> None:
    """Validate the rule files in DIRECTORY (default: LIVECOMMERCE_RULES_DIR or ./rules)."""
    from stream.engine.rules import RuleError
    from stream.local.rulecheck import rule_lines
    from stream.worker.rulewatch import load_rules

    path = Path(directory) if directory is not None else _settings().rules_dir
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
            _settings(), room_id=room, broadcast=broadcast,
            rules_dir=Path(rules_dir) if rules_dir else None,
            events_file=Path(events_file) if events_file else None))
    except (RuleError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(msgspec.json.encode(report).decode() if as_json else format_text(report))
