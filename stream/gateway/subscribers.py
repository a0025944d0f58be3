"""A cap on the live subscribers (SSE and WebSocket) one gateway process holds.

Each subscriber is a socket held open, so a flood of them would use up the process's
file descriptors and take POSTs, Redis and Kafka connections down with it. Past the cap
a new subscriber gets `503` + `Retry-After` (spread over 2-10 s so that a crowd turned
away does not come back in one wave); those already connected are not touched.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import Counter

log = logging.getLogger(__name__)

SUBSCRIBER_PATHS = frozenset({"/v1/rooms/{room}/stock/stream", "/v1/rooms/{room}/ws"})
# File descriptors kept for everything that is not a subscriber: the Redis pool (100),
# Kafka (a few), POSTs, dashboards, the process's own files. 500, as bench/fanout.py
# asks of the open-file limit beyond its clients.
RESERVED_FDS = 500
RETRY_AFTER_S = (2, 10)

TURNED_AWAY = Counter("lc_gateway_subscribers_refused_total",
                      "Subscribers refused with 503 past LIVECOMMERCE_MAX_SUBSCRIBERS")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def effective_cap(*, configured: int, open_files: int) -> int:
    """The cap in force: the setting, lowered to fit under the open-file limit."""
    fits = max(1, open_files - RESERVED_FDS)
    if configured > fits:
        log.warning("LIVECOMMERCE_MAX_SUBSCRIBERS=%d does not fit the open-file limit %d; "
                    "capping subscribers at %d (raise `ulimit -n` for more)",
                    configured, open_files, fits)
        return fits
    return configured


class SubscriberCap:
    """Counts the subscribers in flight; a middleware refuses them past `limit`."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None or resource.canonical not in SUBSCRIBER_PATHS:
            return await handler(request)
        if self.active >= self.limit:
            TURNED_AWAY.inc()
            wait = random.randint(*RETRY_AFTER_S)
            body = {"error": f"this gateway holds its maximum of {self.limit} live "
                             f"subscribers; retry in {wait} s"}
            return web.Response(body=orjson.dumps(body), status=503,
                                content_type="application/json",
                                headers={"Retry-After": str(wait)})
        self.active += 1
        try:
            return await handler(request)
        finally:
            self.active -= 1
