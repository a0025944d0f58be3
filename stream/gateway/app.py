"""The HTTP gateway: the aiohttp app, its routes and middlewares, and the running server.

Paths and answers follow SPEC "Interfaces / HTTP". The POST path is `ingest.py`; live
stock and nudges are `live.py` and `nudgefeed.py`; the host's view is
`stream.hostview.dashboard`.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream.core.auth import Tokens, bearer
from stream.core.config import Settings, parse_origins
from stream.core.topics import Topics
from stream.gateway import errors, openapi, replies
from stream.gateway.appkeys import (
    HOST_LOG,
    INVENTORY,
    NUDGE_RELAY,
    PENDING,
    PRODUCER,
    REDIS,
    SETTINGS,
    STOCK_HUB,
    TOKENS,
    TOPICS,
)
from stream.gateway.cors import apply_cors, websocket_origin
from stream.gateway.errors import json_errors
from stream.gateway.fdlimit import open_files, raise_open_files
from stream.gateway.gctune import tune_gc as tune_collector
from stream.gateway.halfopen import KEEPALIVE_S, guard_headers
from stream.gateway.hub import LiveHub
from stream.gateway.ingest import post_events
from stream.gateway.nudgefeed import NudgeRelay
from stream.gateway.producer import EnvelopeProducer
from stream.gateway.ratelimit import RateLimiter, middleware
from stream.gateway.routes import live_routes
from stream.gateway.screen import add_screen
from stream.gateway.subscribers import SubscriberCap, effective_cap
from stream.hostview.access import reads_host_data
from stream.hostview.dashboard import add_host_view, host_exposition
from stream.store import eventids, keys
from stream.store.connect import Client, connect, is_transient
from stream.store.currenttags import held_tags
from stream.store.inventory import Inventory
from stream.store.nudgebox import NudgeBox
from stream.store.roomlog import HostLog

log = logging.getLogger(__name__)

REDIS_CONNECTIONS = 100
SUBSCRIBERS = web.AppKey("subscribers", SubscriberCap)
BACKLOG = 4096


def create_app(*, settings: Settings, tokens: Tokens, redis: Client,
               producer: EnvelopeProducer, hub: LiveHub | None = None,
               relay: NudgeRelay | None = None) -> web.Application:
    limiter = RateLimiter(tokens, rate=settings.rate_limit,
                          viewer_rate=settings.viewer_rate_limit)
    origins = parse_origins(settings.cors_origins)
    cap = SubscriberCap(limit=effective_cap(configured=settings.max_subscribers,
                                            open_files=open_files()))
    # Outermost first: every error is JSON; Redis away is a 503; a foreign page may not
    # open the WebSocket; past the cap no new subscriber; then the per-token rate limit.
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[json_errors, redis_unavailable,
                                       websocket_origin(origins=origins), cap.middleware,
                                       middleware(limiter)])
    errors.install(app)
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[REDIS] = redis
    app[PRODUCER] = producer
    app[TOPICS] = Topics(settings.topic_prefix)
    app[HOST_LOG] = HostLog(redis)
    app[SUBSCRIBERS] = cap
    app[INVENTORY] = Inventory(redis)
    app[PENDING] = set()
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/viewers/{viewer}/tags", viewer_tags)
    # Live stock and nudges; the hub runs only while Gateway.start/stop (or the caller)
    # runs it, and carries the nudge channel on the same Redis connection.
    app[STOCK_HUB] = hub if hub is not None else LiveHub(redis)
    relay = relay if relay is not None else NudgeRelay(
        NudgeBox(redis, hold_s=settings.nudge_hold_s))
    app[STOCK_HUB].add_channel(keys.NUDGE_CHANNEL, relay.on_payload)
    app[NUDGE_RELAY] = relay
    app.on_startup.append(lambda _: relay.start())
    app.on_cleanup.append(lambda _: relay.stop())
    app.add_routes(live_routes(app[STOCK_HUB], tokens, viewer_feeds=[relay.feed]))
    add_host_view(app, redis, presence_timeout_ms=settings.presence_timeout_s * 1000)
    add_screen(app, redis)
    # Last: both read the finished route table (CORS by path; the document of every route).
    apply_cors(app, origins=origins)
    openapi.publish(app)
    return app


@web.middleware
async def redis_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Redis away (a restart, a failover): 503 and a time to come back, not a 500.
    Nothing is half-done: ids are claimed before Kafka, and a retry after the write
    is refused as a duplicate, which clients count as delivered."""
    try:
        return await handler(request)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("redis unavailable: %r", exc)
        return replies.retry_later("redis unavailable; retry")


async def viewer_tags(request: web.Request) -> web.Response:
    """`GET /v1/viewers/{viewer}/tags`: personal data, for the commerce token only."""
    token = bearer(request.headers.get("Authorization"))
    role = request.app[TOKENS].role(token) if token else None
    if role is None:
        return replies.error(401, "missing or unknown bearer token")
    if role != "commerce":
        return replies.error(403, "tags are personal data: commerce token only")
    viewer = request.match_info["viewer"]
    settings = request.app[SETTINGS]
    tags = await held_tags(request.app[REDIS], viewer, partitions=settings.partitions,
                           deployment=settings.topic_prefix)
    return replies.json_response({"viewer_id": viewer,
                  "tags": [{"room_id": r, "tag": t, "value": v} for r, t, v in tags]})


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[REDIS].ping()
    except Exception as exc:
        return replies.json_response({"status": "degraded", "redis": repr(exc)}, status=503)
    return replies.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """The process's own series for anyone; the rooms' series (GMV, buyers, conversion)
    only for a host or monitor token, as Prometheus sends with `authorization`."""
    body = generate_latest()
    if reads_host_data(request):
        body += await host_exposition(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class Gateway:
    """A running gateway: its HTTP server, Kafka producer and Redis client."""

    def __init__(self, settings: Settings, tokens: Tokens) -> None:
        self.settings = settings
        self.tokens = tokens
        self.producer = EnvelopeProducer(bootstrap=settings.kafka_bootstrap)
        self.relay: NudgeRelay | None = None  # the app's, once started
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None

    async def start(self, *, host: str = "127.0.0.1", port: int | None = None,
                    tune_gc: bool = False) -> None:
        """Connect (`RedisUnusable` within ~25 s for a wrong Redis), then serve.
        `tune_gc`: tune this process's garbage collector for connect storms
        (`gctune.py`); for the `livecommerce gateway` process, not a shared one (tests)."""
        raise_open_files()  # one socket per live viewer
        # A blocking pool: a burst of requests (400 viewers leaving at once) waits for a
        # connection instead of failing with redis-py's "Too many connections".
        self.redis: Client = await connect(
            self.settings.redis_url, max_connections=REDIS_CONNECTIONS,
            timeout_s=self.settings.redis_connect_timeout_s)
        self.hub = LiveHub(self.redis)
        await self.producer.start()
        # The app registers its channels (nudges) on the hub: build it before starting it.
        app = create_app(settings=self.settings, tokens=self.tokens, redis=self.redis,
                         producer=self.producer, hub=self.hub)
        self.relay = app[NUDGE_RELAY]
        self._app = app
        await self.hub.start()
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_S)
        await self._runner.setup()
        assert self._runner.server is not None  # set up just now
        guard_headers(self._runner.server, timeout_s=self.settings.read_timeout_s)
        port = self.settings.http_port if port is None else port
        # A deep accept queue: aiohttp's default of 128 drops SYNs in a connect storm
        # (5,000 viewers a second when the host says "link is up"), and each dropped SYN
        # costs its viewer a 1 s retransmit. The kernel caps it at net.core.somaxconn.
        await web.TCPSite(self._runner, host, port, backlog=BACKLOG).start()
        if tune_gc:
            tune_collector()

    async def stop(self) -> None:
        # First: ends the streaming handlers, which the runner would wait 60 s for.
        if self._runner is not None:
            await self.hub.stop()
            await self._runner.cleanup()
        pending: set[asyncio.Task[None]] = self._app[PENDING] if self._app is not None else set()
        if pending:
            # Writes answered 503 still settle their ids (the producer flushes them too).
            await asyncio.wait(pending, timeout=eventids.LIVE_TTL_S)
        await self.producer.stop()
        if hasattr(self, "redis"):
            await self.redis.aclose()
