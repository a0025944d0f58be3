"""Brand frontends on other origins: CORS (aiohttp-cors) and the WebSocket's Origin check.

Which routes a browser on another origin may use is decided here, by path, once every
route is registered (`apply_cors`, the last step of `create_app`), so a route added
later under one of these paths gets CORS without touching this module:

- public (`PUBLIC_PATHS`, anything under `PUBLIC_PREFIXES`): the stock JSON, its SSE
  stream and the browser client files. `*` in `LIVECOMMERCE_CORS_ORIGINS` opens these.
- posting (`POST_PATHS`): `POST /v1/events` from a page with a platform token. Listed
  origins only: `*` would let any page spend a brand's token.

The WebSocket is not CORS (browsers do not preflight it, and send `Origin` instead), so
`websocket_origin` checks it (and answers a plain GET, with no `Upgrade: websocket`,
`400` naming the header): no `Origin` (a native app) or the gateway's own origin
passes, a listed origin passes, any other origin gets `403` (it carries a viewer's
nudges, so `*` does not open it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_cors
import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

PUBLIC_PATHS = frozenset({"/v1/rooms/{room}/stock", "/v1/rooms/{room}/stock/stream"})
PUBLIC_PREFIXES = ("/client/",)
POST_PATHS = frozenset({"/v1/events"})
WEBSOCKET_PATHS = frozenset({"/v1/rooms/{room}/ws"})

# What a page may send and read: the bearer token and JSON in; the retry hint and the
# request id (named in a 500) out. Browsers may cache the preflight for 10 minutes.
_OPTIONS = {"allow_credentials": False, "allow_headers": ("Authorization", "Content-Type"),
            "expose_headers": ("Retry-After", "X-Request-Id"), "max_age": 600}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _public(canonical: str) -> bool:
    # A static resource's canonical is its prefix without the slash ("/client").
    return (canonical in PUBLIC_PATHS or canonical.startswith(PUBLIC_PREFIXES)
            or canonical + "/" in PUBLIC_PREFIXES)


def apply_cors(app: web.Application, *, origins: tuple[str, ...]) -> None:
    """CORS on the public and posting routes of `app` (call after adding routes)."""
    cors = aiohttp_cors.setup(app)
    listed = tuple(o for o in origins if o != "*")
    for resource in list(app.router.resources()):
        canonical = resource.canonical
        allowed: tuple[str, ...]
        methods: tuple[str, ...]
        if _public(canonical):
            allowed, methods = origins, ("GET", "HEAD")
        elif canonical in POST_PATHS:
            allowed, methods = listed, ("POST",)
        else:
            continue
        # Added even with no origin allowed: a preflight then gets the library's 403
        # ("origin not allowed") instead of a 405 that hides why.
        options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
            allow_methods=methods, **_OPTIONS)
        cors.add(resource, {origin: options for origin in allowed})


def websocket_origin(*, origins: tuple[str, ...]) -> Middleware:
    """Middleware: the viewer WebSocket only from no Origin, the same or a listed origin."""
    listed = frozenset(o for o in origins if o != "*")

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_websocket(request):
            return await handler(request)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin in listed or origin == f"{request.scheme}://{request.host}":
            return await _upgraded(request, handler)
        return _refuse(403, f"Origin: {origin!r} may not open this WebSocket: not this "
                            "gateway's origin nor in LIVECOMMERCE_CORS_ORIGINS")

    return check_origin


async def _upgraded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer; its own refusals (room, token) stand, but aiohttp's plain-text
    400 for a GET without `Upgrade: websocket` becomes one that names the header."""
    try:
        return await handler(request)
    except web.HTTPBadRequest as exc:
        if exc.content_type == "application/json" or \
                request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            raise
        return _refuse(400, "Upgrade: expected `websocket`; this path is a WebSocket "
                            "(for plain HTTP read /v1/rooms/{room}/stock or its stream)")


def _refuse(status: int, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=status,
                        content_type="application/json")


def _is_websocket(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in WEBSOCKET_PATHS
