"""JSON answers shared by the gateway's handlers."""

from __future__ import annotations

import orjson
from aiohttp import web


def retry_later(message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=503,
                        content_type="application/json", headers={"Retry-After": "1"})


def json_response(data: object, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)
