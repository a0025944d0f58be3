"""Running the system: `up`, `demo`, one `worker` or one `gateway`, and `simulate`, which
drives a show into a system already running."""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from stream.cli.common import load_settings, run_coro
from stream.core.auth import ROLES

if TYPE_CHECKING:
    from stream.local.runner import Running
    from stream.local.state import UpState


def _run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run` on uvloop where there is one: the gateway's fan-out to 10,000
    sockets is event-loop bound, and uvloop's loop costs about half of asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        run_coro(coro)
    else:
        run_coro(coro, runner=uvloop.run)


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


@click.command()
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
        settings = load_settings()
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


@click.command()
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

    settings = load_settings()
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


@click.command()
@click.option("--loglevel", default="warn", show_default=True,
              help="faust's own log level; the worker's status lines are always at INFO.")
def worker(loglevel: str) -> None:
    """One stream worker against the configured Kafka and Redis."""
    from stream.worker.app import run

    settings = load_settings()
    if not settings.kafka_url or not settings.redis_url:
        raise click.UsageError("set LIVECOMMERCE_KAFKA_URL and LIVECOMMERCE_REDIS_URL "
                               "(or use `livecommerce up`)")
    run(settings, loglevel=loglevel)


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=None,
              help="Port to listen on (default: LIVECOMMERCE_HTTP_PORT, else 8080).")
def gateway(host: str, port: int | None) -> None:
    """One HTTP gateway against the configured Kafka and Redis."""
    from stream.core.auth import Tokens
    from stream.gateway.app import Gateway

    settings = load_settings()
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


@click.command()
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

    system = find_system(load_settings(), gateway_url=gateway_url, need_gateway=True)
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


__all__ = ["demo", "gateway", "simulate", "up", "worker"]
