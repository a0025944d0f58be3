"""The `livecommerce picklist` and `followups` commands' reading and printing: a room's
after-show data read from the system's Redis, and a table a terminal shows aligned."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from stream.core.config import Settings
from stream.hostview.afterreads import AfterShow
from stream.hostview.picklist import PickList, header, table
from stream.hostview.reader import RoomReader
from stream.local.errors import require_room
from stream.store.connect import connect

T = TypeVar("T")


async def read_after_show(settings: Settings, room: str,
                          read: Callable[[AfterShow], Coroutine[Any, Any, T]]) -> T:
    """`read(AfterShow)` on a client of `settings`' Redis, once `room` is known there
    (NoSuchRoom names the rooms it has otherwise)."""
    redis = await connect(settings.redis_url, timeout_s=settings.redis_connect_timeout_s)
    try:
        await require_room(redis, room)
        reader = RoomReader(redis, presence_timeout_ms=settings.presence_timeout_s * 1000)
        return await read(AfterShow(redis, reader=reader))
    finally:
        await redis.aclose()


def _width(cell: str) -> int:
    """Terminal columns of `cell`: a CJK character (East Asian wide or full) takes two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in cell)


def table_lines(headers: list[str], rows: list[list[str]]) -> list[str]:
    """The header and rows, each column padded to its widest cell."""
    widths = [max([_width(h), *(_width(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True))
            .rstrip() for row in [headers, *rows]]


def picklist_text(pick: PickList) -> tuple[str, str]:
    """(the pick list as an aligned table, a line of its totals and what was left out)."""
    left_out = ", ".join(f"{n} {k}" for k, n in pick.excluded.items() if n) or "none"
    return ("\n".join(table_lines(header(pick), table(pick))),
            f"{pick.paid_orders} paid orders, {pick.units} units, {pick.amount:,.2f}; "
            f"not picked: {left_out}")
