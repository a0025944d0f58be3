"""Every error answer is JSON: no aiohttp HTML page, and a 500 names a request id.

`json_errors` is the outermost middleware. An aiohttp `HTTPException` (404 from the
router, 405, a handler's `HTTPBadRequest`) keeps its status and headers and gets a JSON
body `{"error": …}`. Any other exception is a bug: it is logged with a fresh request id
and answered `500 {"error": "internal error", "request_id": …}` with the same id in
`X-Request-Id`, so an operator finds the traceback from what the client reports.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set once a response has started (headers sent): then no other answer can be sent.
STARTED = web.RequestKey("lc.response_started", bool)


async def _mark_started(request: web.Request, response: web.StreamResponse) -> None:
    request[STARTED] = True


def install(app: web.Application) -> None:
    """Track started responses (so a failing stream is not answered twice)."""
    app.on_response_prepare.append(_mark_started)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" \
            else exc.reason
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() not in ("content-type", "content-length")}
        return web.Response(body=orjson.dumps({"error": message}), status=exc.status,
                            content_type="application/json", headers=headers)
    except Exception:
        request_id = uuid.uuid4().hex
        log.exception("request %s: %s %s failed", request_id, request.method, request.path)
        if request.get(STARTED):
            raise  # a stream already under way: aiohttp closes the connection
        return web.Response(body=orjson.dumps({"error": "internal error",
                                               "request_id": request_id}),
                            status=500, content_type="application/json",
                            headers={"X-Request-Id": request_id})
