"""Reading a room's results from the live system's Redis: the stock `check`, the post-live
`report`, the `picklist` of paid orders and the `followups` for the SCRM."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from stream.cli.common import load_settings, run_coro

T = TypeVar("T")


@click.command()
@click.argument("rooms", nargs=-1)
def check(rooms: tuple[str, ...]) -> None:
    """Verify available + reserved + sold == loaded for every SKU (all rooms by default)."""
    from stream.local.errors import known_rooms, require_room
    from stream.local.state import find_system
    from stream.store.connect import connect
    from stream.store.inventory import Inventory

    system = find_system(load_settings(), need_redis=True)
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

    sys.exit(1 if run_coro(audit()) else 0)


_BROADCAST_HELP = ("Which broadcast of ROOM (an id from /v1/rooms/ROOM/broadcasts); "
                   "default: the one on air, or the latest.")


@click.command()
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
    system = find_system(load_settings(), need_redis=True)
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
        result = run_coro(read())
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

    system = find_system(load_settings(), need_redis=True)
    click.echo(system.describe(), err=True)
    try:
        return run_coro(read_after_show(system.settings, room, read))
    except UnknownBroadcast as exc:
        raise click.BadParameter(str(exc), param_hint="--broadcast") from None


@click.command()
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


@click.command()
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


__all__ = ["check", "followups", "picklist", "report"]
