"""Half-open connections: one that does not finish its request header in time is closed.

aiohttp has no header-read timeout of its own; its keep-alive timer also closes idle
connections between requests, and tying the two together (30 s) made clients that keep
connections longer race the close: a POST sent as the server hangs up is lost and
retried late (the oracle test caught a nudge firing before its cancelling order). So a
new connection gets its own deadline, cancelled when its first request header is
complete (aiohttp calls the request factory then), and idle keep-alive stays longer
(`KEEPALIVE_S`, which also bounds a half-sent later request on a kept-alive connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

# Idle keep-alive between requests: nginx's default, longer than clients' own idle
# timeouts (aiohttp's client: 15 s), so the client, not the server, closes idle ones.
KEEPALIVE_S = 75.0


def guard_headers(server: web.Server, *, timeout_s: float) -> None:
    """Close connections of `server` whose first request header is not in after
    `timeout_s` (call after `AppRunner.setup()`, before sites start)."""
    loop = asyncio.get_running_loop()
    pending: dict[RequestHandler, asyncio.TimerHandle] = {}
    made, lost, factory = server.connection_made, server.connection_lost, \
        server.request_factory

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)
        pending[handler] = loop.call_later(timeout_s, handler.force_close)

    def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
        timer = pending.pop(handler, None)
        if timer is not None:
            timer.cancel()
        lost(handler, exc)

    def request_factory(message: Any, payload: Any, protocol: RequestHandler,
                        *args: Any) -> Any:
        timer = pending.pop(protocol, None)
        if timer is not None:
            timer.cancel()
        return factory(message, payload, protocol, *args)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]
    server.request_factory = request_factory
