"""The host's view on the gateway: metrics as JSON, the live dashboard page, Prometheus.

`add_host_view(app, redis)` registers the routes. Every number comes from Redis (what
all workers counted), so any gateway answers the same. A room's metrics are computed
at most every `CACHE_S` per gateway: a hundred dashboards on one room cost one read.
"""

from __future__ import annotations

import logging
import re
import time
from importlib import resources

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from stream.engine.state import PRESENCE_TIMEOUT_MS
from stream.engine.timeline import Broadcast
from stream.hostview.access import host_data
from stream.hostview.exports import add_exports
from stream.hostview.metrics import RoomMetrics, compute
from stream.hostview.prom import RoomCollector
from stream.hostview.reader import RoomReader, UnknownBroadcast
from stream.store.connect import Client

log = logging.getLogger(__name__)

CACHE_S = 0.5
# Prometheus exports rooms with an event in this window (a bounded set of room labels).
EXPORT_WINDOW_MS = 6 * 3600 * 1000
_ROOM_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,64}\Z")
STATIC = resources.files("stream.hostview") / "static"


class HostView:
    """Computes rooms' metrics from Redis, with a short per-room cache."""

    def __init__(self, redis: Client, *, presence_timeout_ms: int = PRESENCE_TIMEOUT_MS) -> None:
        self.reader = RoomReader(redis, presence_timeout_ms=presence_timeout_ms)
        self._cache: dict[str, tuple[float, RoomMetrics]] = {}

    async def metrics(self, room_id: str, broadcast: str | None = None) -> RoomMetrics:
        """One broadcast's metrics (default: the one on air, or the latest)."""
        key = f"{room_id}|{broadcast or ''}"
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        raw = await self.reader.raw(room_id, wall_now_ms=int(time.time() * 1000),
                                     broadcast=broadcast)
        result = compute(raw)
        self._cache[key] = (now, result)
        return result

    async def broadcasts(self, room_id: str) -> Broadcasts:
        room = await self.reader.room(room_id)
        return Broadcasts(room_id=room_id, broadcasts=room.broadcasts[::-1])

    async def exposition(self) -> bytes:
        """The recent rooms' metrics in Prometheus text format."""
        since = int(time.time() * 1000) - EXPORT_WINDOW_MS
        rooms = [await self.metrics(r) for r in await self.reader.recent_rooms(since_ms=since)]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RoomCollector(rooms))
        return generate_latest(registry)


class Broadcasts(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /v1/rooms/{room}/broadcasts`: the room's broadcasts, newest first."""

    room_id: str
    broadcasts: list[Broadcast]


HOST_VIEW = web.AppKey("host_view", HostView)


def add_host_view(app: web.Application, redis: Client, *,
                  presence_timeout_ms: int = PRESENCE_TIMEOUT_MS) -> None:
    """Routes: `/v1/rooms/{room}/metrics`, `/dashboard/{room}` and its assets."""
    app[HOST_VIEW] = HostView(redis, presence_timeout_ms=presence_timeout_ms)
    app.router.add_get("/v1/rooms/{room}/metrics", room_metrics)
    app.router.add_get("/v1/rooms/{room}/broadcasts", room_broadcasts)
    add_exports(app, redis, reader=app[HOST_VIEW].reader)
    app.router.add_get("/dashboard/{room}", dashboard_page)
    app.router.add_get("/dashboard/assets/{name}", asset)


async def host_exposition(app: web.Application) -> bytes:
    """For the gateway's `/metrics`: the room metrics after the process's own. With
    Redis away the process's own still go out (they show the outage)."""
    view = app.get(HOST_VIEW)
    if view is None:
        return b""
    try:
        return await view.exposition()
    except RedisError as exc:
        log.warning("room metrics unavailable: %r", exc)
        return b""


def _room(request: web.Request) -> str:
    room = request.match_info["room"]
    if not _ROOM_ID.match(room):
        raise web.HTTPBadRequest(text="room: expected [A-Za-z0-9._:@-]{1,64}")
    return room


@host_data
async def room_metrics(request: web.Request) -> web.Response:
    room = _room(request)
    broadcast = request.query.get("broadcast") or None
    if broadcast is not None and not _ROOM_ID.match(broadcast):
        raise web.HTTPBadRequest(text="broadcast: expected [A-Za-z0-9._:@-]{1,64}")
    try:
        metrics = await request.app[HOST_VIEW].metrics(room, broadcast)
    except UnknownBroadcast as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(body=msgspec.json.encode(metrics), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


@host_data
async def room_broadcasts(request: web.Request) -> web.Response:
    listing = await request.app[HOST_VIEW].broadcasts(_room(request))
    return web.Response(body=msgspec.json.encode(listing), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def dashboard_page(request: web.Request) -> web.Response:
    _room(request)  # the page reads its room from the URL
    return web.Response(text=(STATIC / "dashboard.html").read_text(encoding="utf-8"),
                        content_type="text/html")


_ASSETS = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / name).read_bytes(), content_type=_ASSETS[name],
                        headers={"Cache-Control": "max-age=60"})
