"""The live room's screen, served by the gateway: the browser client library, the
reference viewer page and the public product list the page labels its counts with.

Static files from stream/gateway/static/ (no build step): the client is one ES module,
the page a plain HTML file that imports it.
"""

from __future__ import annotations

from importlib import resources

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from stream.gateway.routes import room_id_of
from stream.store import stockread
from stream.store.connect import Client

STATIC = resources.files("stream.gateway") / "static"
_JS = "text/javascript"
_ASSETS = {"live.js": _JS, "live.css": "text/css"}
# Short: a fixed client reaches every page within 5 minutes, and a connect storm of
# 5,000 viewers a second still costs each browser one request.
CACHE = "public, max-age=300"

REDIS: web.AppKey[Client] = web.AppKey("screen_redis")


def add_screen(app: web.Application, redis: Client) -> None:
    """Routes: `/client/livecommerce.js`, `/live/{room}` and its assets, products."""
    app[REDIS] = redis
    app.router.add_get("/client/livecommerce.js", client)
    app.router.add_get("/live/{room}", page)
    app.router.add_get("/live/assets/{name}", asset)
    app.router.add_get("/v1/rooms/{room}/products", products)


async def client(request: web.Request) -> web.Response:
    body = (STATIC / "client" / "livecommerce.js").read_bytes()
    return web.Response(body=body, content_type=_JS, headers={"Cache-Control": CACHE})


async def page(request: web.Request) -> web.Response:
    room_id_of(request)  # the page reads its room from the URL; refuse a bad one here
    return web.Response(text=(STATIC / "live" / "live.html").read_text(encoding="utf-8"),
                        content_type="text/html", headers={"Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / "live" / name).read_bytes(),
                        content_type=_ASSETS[name], headers={"Cache-Control": CACHE})


async def products(request: web.Request) -> web.Response:
    """`GET /v1/rooms/{room}/products`: `{"room_id", "products": [{"sku", "name",
    "price"}]}`, what the room's live page shows anyway (no token)."""
    room_id = room_id_of(request)
    try:
        found = await stockread.products(request.app[REDIS], room_id)
    except RedisError as exc:
        return web.Response(body=orjson.dumps({"error": f"products are unavailable "
                                               f"({type(exc).__name__}); retry"}),
                            status=503, content_type="application/json")
    return web.Response(body=orjson.dumps({"room_id": room_id, "products": [
        {"sku": sku, "name": name, "price": price} for sku, name, price in found]}),
        content_type="application/json")
