"""After the show, on the gateway: a broadcast's pick lists and follow-ups, JSON or CSV.

- `GET /v1/rooms/{room}/picklist?broadcast=ID&by=sku|leader|customer[&format=csv]`: a
  commerce or host token, for every view: the by-customer view names buyers (personal
  data), and the others are the store's business, not an operator's (never monitor).
- `GET /v1/rooms/{room}/followups?broadcast=ID[&format=csv]`: who to follow up and how,
  per viewer (personal data: commerce or host).

Both read Redis on every request (no cache): they are read a few times after a show,
and a store wants the orders paid a second ago on its sheet.
"""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from stream.core.auth import TokenRole
from stream.hostview.access import refusal_unless
from stream.hostview.afterreads import FOLLOWUP_HEADER, AfterShow, followup_rows
from stream.hostview.picklist import VIEWS, picklist_csv, to_csv
from stream.hostview.reader import RoomReader, UnknownBroadcast
from stream.store.connect import Client

_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,64}\Z")
READERS: frozenset[TokenRole] = frozenset({"commerce", "host"})
AFTER_SHOW = web.AppKey("after_show", AfterShow)


def add_exports(app: web.Application, redis: Client, *, reader: RoomReader | None = None) -> None:
    app[AFTER_SHOW] = AfterShow(redis, reader=reader)
    app.router.add_get("/v1/rooms/{room}/picklist", picklist)
    app.router.add_get("/v1/rooms/{room}/followups", followups)


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=msgspec.json.encode({"error": message}), status=status,
                        content_type="application/json")


def _params(request: web.Request, *, what: str) -> tuple[str, str | None, bool] | web.Response:
    """(room, broadcast, csv) from the request; or the `401`/`403` for a token that may not
    read `what`, or the `400` naming the field."""
    refused = refusal_unless(request, READERS, what=what)
    if refused is not None:
        return refused
    room = request.match_info["room"]
    if not _ID.match(room):
        return _error(400, "room: expected [A-Za-z0-9._:@-]{1,64}")
    broadcast = request.query.get("broadcast") or None
    if broadcast is not None and not _ID.match(broadcast):
        return _error(400, "broadcast: expected [A-Za-z0-9._:@-]{1,64}")
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(400, f"format: expected json or csv, got {fmt[:20]!r}")
    return room, broadcast, fmt == "csv"


def _csv(body: str, name: str) -> web.Response:
    return web.Response(body=body.encode("utf-8"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"',
                                 "Cache-Control": "no-store"})


def _json(value: object) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def picklist(request: web.Request) -> web.Response:
    by = request.query.get("by", "sku")
    if by not in VIEWS:
        return _error(400, f"by: expected one of {', '.join(VIEWS)}, got {by[:20]!r}")
    params = _params(request, what=f"the pick list by {by}")
    if isinstance(params, web.Response):
        return params
    room, broadcast, as_csv = params
    try:
        pick = await request.app[AFTER_SHOW].picklist(room, by=by, broadcast=broadcast)
    except UnknownBroadcast as exc:
        return _error(404, str(exc))
    if as_csv:
        return _csv(picklist_csv(pick), f"picklist-{room}-{pick.broadcast_id or ''}-{by}")
    return _json(pick)


async def followups(request: web.Request) -> web.Response:
    params = _params(request, what="follow-ups")
    if isinstance(params, web.Response):
        return params
    room, broadcast, as_csv = params
    try:
        export = await request.app[AFTER_SHOW].followups(room, broadcast=broadcast)
    except UnknownBroadcast as exc:
        return _error(404, str(exc))
    if as_csv:
        return _csv(to_csv(FOLLOWUP_HEADER, followup_rows(export)),
                    f"followups-{room}-{export.broadcast_id or ''}")
    return _json(export)
