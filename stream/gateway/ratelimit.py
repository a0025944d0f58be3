"""Per-token request rate limits for the gateway (`429` with `Retry-After`).

Counted per gateway process, in memory (the `limits` library's sliding-window counter):
N gateways behind a load balancer allow up to N times the configured rate. That keeps a
Redis round trip off every request and keeps the gateway answering when Redis is away;
the limit is a guard against a runaway client, not a quota.

Only tokens that check out are counted: a role token (`Authorization: Bearer`) under
`rate_limit`, a viewer token (`?viewer=V&token=T` on the WebSocket) under
`viewer_rate_limit`. Unknown tokens go on to the handler's `401`/`403`, so made-up
tokens cannot fill the counters; requests without a token are not limited here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import Counter

from stream.core.auth import Tokens, bearer

LIMITED = Counter("lc_gateway_rate_limited_total", "Requests refused with 429", ["kind"])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse(spec: str) -> list[RateLimitItem]:
    """`"2000/second;50000/minute"` -> limits; `""` or `"off"` -> no limit."""
    spec = spec.strip()
    if spec.lower() in ("", "off", "0", "none"):
        return []
    try:
        return parse_many(spec)
    except ValueError as exc:
        raise ValueError(f"rate limit {spec!r}: {exc} (e.g. '2000/second')") from None


class RateLimiter:
    """Which limits a request's token falls under, and whether it has room left."""

    def __init__(self, tokens: Tokens, *, rate: str, viewer_rate: str) -> None:
        self.tokens = tokens
        self.rate = parse(rate)
        self.viewer_rate = parse(viewer_rate)
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    def key(self, request: web.Request) -> tuple[str, list[RateLimitItem]] | None:
        """(counter key, limits) for a request carrying a valid token, else None."""
        token = bearer(request.headers.get("Authorization"))
        if token is not None and self.rate and self.tokens.role(token) is not None:
            return "role:" + token, self.rate
        viewer, token = request.query.get("viewer", ""), request.query.get("token")
        if token and viewer and self.viewer_rate and self.tokens.is_viewer(viewer, token):
            return "viewer:" + viewer, self.viewer_rate
        return None

    async def retry_after(self, request: web.Request) -> int | None:
        """None if the request may go on (and count it), else seconds to wait."""
        found = self.key(request)
        if found is None:
            return None
        key, items = found
        for item in items:
            if not await self._limiter.hit(item, key):
                stats = await self._limiter.get_window_stats(item, key)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


def middleware(limiter: RateLimiter) -> Middleware:
    """An aiohttp middleware answering `429` with `Retry-After` past the limit."""

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        wait = await limiter.retry_after(request)
        if wait is None:
            return await handler(request)
        kind = "viewer" if "token" in request.query else "role"
        LIMITED.labels(kind).inc()
        body = {"error": f"rate limit exceeded for this token; retry in {wait} s"}
        return web.Response(body=orjson.dumps(body), status=429,
                            content_type="application/json",
                            headers={"Retry-After": str(wait)})

    return rate_limit
