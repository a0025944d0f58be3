"""The HTTP gateway: events in (auth, validation, dedupe, envelopes), reads out.

Paths and answers follow SPEC "Interfaces / HTTP". Validation happens here so a
client learns at once which item was wrong and why; every refused item is also
written to the dead-letter topic for operators.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream.core.auth import Tokens, bearer
from stream.core.codec import BodyError, clock_error, decode_events, encode
from stream.core.config import Settings
from stream.core.deadletters import dead_letter, room_of
from stream.core.models import Event, HostEvent, Origin
from stream.core.topics import Topics, key_of, partition_for
from stream.engine.viewers import tags_in
from stream.gateway.fdlimit import raise_open_files
from stream.gateway.live import StockHub, live_routes
from stream.gateway.nudgefeed import NudgeRelay
from stream.gateway.producer import EnvelopeProducer
from stream.gateway.ratelimit import RateLimiter, middleware
from stream.hostview.dashboard import add_host_view, host_exposition
from stream.store import keys
from stream.store.roomlog import HostLog

log = logging.getLogger(__name__)

EVENTS_IN = Counter("lc_gateway_events_total", "Events posted to the gateway", ["outcome"])

REDIS_CONNECTIONS = 100
# A retry is refused as a duplicate only when the first copy really is in Kafka; a
# request still writing the same ids is waited for, briefly (see _claim_ids).
LIVE_TTL_S = 15
PENDING_WAITS, PENDING_WAIT_S = 40, 0.05
_LEGACY = {"1"}  # claims from before requests were named: written

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", Tokens)
REDIS = web.AppKey("redis", Redis)
PRODUCER = web.AppKey("producer", EnvelopeProducer)
TOPICS = web.AppKey("topics", Topics)
STOCK_HUB = web.AppKey("stock_hub", StockHub)
HOST_LOG = web.AppKey("host_log", HostLog)


def create_app(*, settings: Settings, tokens: Tokens, redis: Redis,
               producer: EnvelopeProducer, hub: StockHub | None = None,
               relay: NudgeRelay | None = None) -> web.Application:
    limiter = RateLimiter(tokens, rate=settings.rate_limit,
                          viewer_rate=settings.viewer_rate_limit)
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[redis_unavailable, middleware(limiter)])
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[REDIS] = redis
    app[PRODUCER] = producer
    app[TOPICS] = Topics(settings.topic_prefix)
    app[HOST_LOG] = HostLog(redis)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/viewers/{viewer}/tags", viewer_tags)
    # Live stock and nudges; the hub runs only while Gateway.start/stop (or the caller)
    # runs it, and carries the nudge channel on the same Redis connection.
    app[STOCK_HUB] = hub if hub is not None else StockHub(redis)
    relay = relay if relay is not None else NudgeRelay()
    app[STOCK_HUB].add_channel(keys.NUDGE_CHANNEL, relay.on_payload)
    app.add_routes(live_routes(app[STOCK_HUB], tokens, viewer_feeds=[relay.feed]))
    add_host_view(app, redis)
    return app


@web.middleware
async def redis_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Redis away (a restart, a failover): 503 and a time to come back, not a 500.
    Nothing is half-done: ids are claimed before Kafka, and a retry after the write
    is refused as a duplicate, which clients count as delivered."""
    try:
        return await handler(request)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("redis unavailable: %r", exc)
        return _retry_later("redis unavailable; retry")


def _retry_later(message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=503,
                        content_type="application/json", headers={"Retry-After": "1"})


def _json(data: object, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


async def post_events(request: web.Request) -> web.Response:
    app = request.app
    settings, topics = app[SETTINGS], app[TOPICS]
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        return _error(401, "missing bearer token")
    role = app[TOKENS].role(token)
    if role is None:
        return _error(401, "unknown token")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body over {settings.max_body_bytes} bytes; send smaller batches")
    try:
        decoded = decode_events(body)
    except BodyError as exc:
        return _error(400, str(exc))

    forbidden = [i for i, ev in decoded.events if type(ev).role != role]
    if forbidden:
        i = forbidden[0]
        kind = next(type(ev) for j, ev in decoded.events if j == i)
        return _error(403, f"[{i}] {kind.__struct_config__.tag} needs a {kind.role} token, "
                           f"this one is {role}; nothing was accepted")

    now_ms = int(time.time() * 1000)
    rejected: list[tuple[int, str, bytes]] = [(r.index, r.error, r.raw) for r in decoded.rejected]
    candidates: list[tuple[int, Event]] = []
    seen_here: set[str] = set()
    for index, event in decoded.events:
        error = clock_error(event, now_ms=now_ms, max_future_ms=settings.max_future_ms)
        if error is None and event.event_id in seen_here:
            error = "event_id: duplicate within this request - at `$.event_id`"
        if error is not None:
            rejected.append((index, error, encode(event)))
        else:
            seen_here.add(event.event_id)
            candidates.append((index, event))

    request = uuid.uuid4().hex
    claim = functools.partial(_claim_ids, app[REDIS], request=request,
                              ttl_s=settings.dedupe_ttl_s)
    fresh, duplicates, pending = await claim(candidates)
    for _ in range(PENDING_WAITS):
        if not pending:
            break
        # The same ids in another request in flight (a client's concurrent retry): its
        # outcome decides theirs within milliseconds; wait for it, briefly.
        await asyncio.sleep(PENDING_WAIT_S)
        more, seen, pending = await claim(pending)
        fresh, duplicates = fresh + more, duplicates + seen
    if pending:
        await _release_ids(app[REDIS], fresh)
        return _retry_later(f"{len(pending)} events are still being written by an earlier "
                            "request (or one that failed half-way); retry")
    try:
        await _produce(app[PRODUCER], topics, settings.partitions, fresh)
    except Exception as exc:
        # Not written: release the ids so the client's retry is not refused as a duplicate.
        await _release_ids(app[REDIS], fresh)
        log.warning("produce failed: %r", exc)
        return _error(503, f"could not write to Kafka ({type(exc).__name__}); retry")

    # In Kafka now: from here a 503 would make the client send them again, so Redis being
    # away only costs what Redis adds (the worker's host path fills the room log too).
    try:
        await _mark_written(app[REDIS], request, settings.dedupe_ttl_s)
        # Host events reach the room log before the 202: an order accepted after a segment
        # starts then sees that segment, even if the host topic is read later.
        await app[HOST_LOG].append([e for _, e in fresh if isinstance(e, HostEvent)])
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("accepted events written to Kafka, Redis away: %r", exc)
    await _dead_letter(app[PRODUCER], app[REDIS], topics, rejected, now_ms)
    answer = sorted(
        [(i, e) for i, e, _ in rejected]
        + [(i, "event_id: duplicate of an event already accepted - at `$.event_id`")
           for i, _ in duplicates])
    EVENTS_IN.labels("accepted").inc(len(fresh))
    EVENTS_IN.labels("rejected").inc(len(rejected))
    EVENTS_IN.labels("duplicate").inc(len(duplicates))
    return _json({"accepted": len(fresh),
                  "rejected": [{"index": i, "error": e} for i, e in answer]}, status=202)


Pairs = list[tuple[int, Event]]


async def _claim_ids(redis: Redis, events: Pairs, *, request: str,
                     ttl_s: int) -> tuple[Pairs, Pairs, Pairs]:
    """Claim each event_id for `request` (SET NX): (fresh, written before, pending).

    A claimed id names its request. That request is *written* once Kafka acked its
    events, *live* while it works (a short TTL), neither if it died half-way (Redis went
    away): then its ids are taken over, as they cannot be in Kafka. One command per
    event, two per request.
    """
    if not events:
        return [], [], []
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.request_live(request), 1, ex=LIVE_TTL_S)
        for _, event in events:
            pipe.set(keys.seen_event(event.event_id), request, nx=True, ex=ttl_s, get=True)
        before = (await pipe.execute())[1:]
    fresh = [pair for pair, old in zip(events, before, strict=True) if old is None]
    taken = [(pair, old.decode()) for pair, old in zip(events, before, strict=True)
             if old is not None and old.decode() != request]
    if not taken:
        return fresh, [], []
    owners = sorted({owner for _, owner in taken})
    async with redis.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.exists(keys.request_written(owner))
            pipe.exists(keys.request_live(owner))
        found = await pipe.execute()
    written_by = {o for o, w in zip(owners, found[::2], strict=True) if w}
    live = {o for o, x in zip(owners, found[1::2], strict=True) if x}
    written = [pair for pair, owner in taken if owner in written_by or owner in _LEGACY]
    pending = [pair for pair, owner in taken if owner in live and owner not in written_by]
    dead = [(pair, owner) for pair, owner in taken
            if owner not in written_by and owner not in live and owner not in _LEGACY]
    if dead:  # take over, unless another request just did (GET says who had it)
        async with redis.pipeline(transaction=False) as pipe:
            for (_, event), _ in dead:
                pipe.set(keys.seen_event(event.event_id), request, xx=True, ex=ttl_s, get=True)
            swapped = await pipe.execute()
        for (pair, owner), old in zip(dead, swapped, strict=True):
            mine = old is not None and old.decode() == owner
            (fresh if mine else pending).append(pair)  # not mine: settled on the next look
    return fresh, written, pending


async def _mark_written(redis: Redis, request: str, ttl_s: int) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.request_written(request), 1, ex=ttl_s)
        pipe.delete(keys.request_live(request))
        await pipe.execute()


async def _release_ids(redis: Redis, events: Pairs) -> None:
    if events:
        await redis.delete(*(keys.seen_event(e.event_id) for _, e in events))


async def _produce(producer: EnvelopeProducer, topics: Topics, partitions: int,
                   events: list[tuple[int, Event]]) -> None:
    waiters = [
        producer.add(topics.for_role(type(event).role),
                     partition_for(key_of(event), partitions), encode(event))
        for _, event in events
    ]
    if waiters:
        await asyncio.gather(*waiters)


async def _dead_letter(producer: EnvelopeProducer, redis: Redis, topics: Topics,
                       rejected: list[tuple[int, str, bytes]], now_ms: int) -> None:
    if not rejected:
        return
    letters = [dead_letter(raw, error, Origin(source="gateway", index=index), now_ms=now_ms)
               for index, error, raw in rejected]
    await asyncio.gather(*(producer.send_one(topics.dead_letters, x) for x in letters))
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for _, _, raw in rejected:
                pipe.hincrby(keys.stats(room_of(raw)), "dead_letters", 1)
            await pipe.execute()
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("%d dead letters written, not counted (Redis away): %r", len(letters), exc)


async def viewer_tags(request: web.Request) -> web.Response:
    """`GET /v1/viewers/{viewer}/tags`: personal data, for the commerce token only."""
    token = bearer(request.headers.get("Authorization"))
    role = request.app[TOKENS].role(token) if token else None
    if role is None:
        return _error(401, "missing or unknown bearer token")
    if role != "commerce":
        return _error(403, "tags are personal data: commerce token only")
    viewer = request.match_info["viewer"]
    tags = await held_tags(request.app[REDIS], viewer,
                           partitions=request.app[SETTINGS].partitions)
    return _json({"viewer_id": viewer,
                  "tags": [{"room_id": r, "tag": t, "value": v} for r, t, v in tags]})


async def held_tags(redis: Redis, viewer: str, *, partitions: int) -> list[tuple[str, str, str]]:
    """(room, tag, value) the viewer holds now, sorted: read from the engine's saved state
    (saved every second), so they are what the tag records on Kafka add up to."""
    rooms = sorted(r.decode() for r in await redis.smembers(keys.viewer_rooms(viewer)))
    if not rooms:
        return []
    states = keys.viewer_states(partition_for(viewer, partitions))
    blobs = await redis.hmget(states, [f"{room}|{viewer}" for room in rooms])
    return sorted((room, tag, value) for room, blob in zip(rooms, blobs, strict=True) if blob
                  for tag, values in tags_in(blob).items() for value in values)


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[REDIS].ping()
    except Exception as exc:
        return _json({"status": "degraded", "redis": repr(exc)}, status=503)
    return _json({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest() + await host_exposition(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class Gateway:
    """A running gateway: its HTTP server, Kafka producer and Redis client."""

    def __init__(self, settings: Settings, tokens: Tokens) -> None:
        self.settings = settings
        self.tokens = tokens
        # A blocking pool: a burst of requests (400 viewers leaving at once) waits for a
        # connection instead of failing with redis-py's "Too many connections".
        self.redis = Redis.from_pool(BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=10))
        self.producer = EnvelopeProducer(bootstrap=settings.kafka_bootstrap)
        self.hub = StockHub(self.redis)
        self._runner: web.AppRunner | None = None

    async def start(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        raise_open_files()  # one socket per live viewer
        await self.producer.start()
        # The app registers its channels (nudges) on the hub: build it before starting it.
        app = create_app(settings=self.settings, tokens=self.tokens, redis=self.redis,
                         producer=self.producer, hub=self.hub)
        await self.hub.start()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = self.settings.http_port if port is None else port
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        # First: ends the streaming handlers, which the runner would wait 60 s for.
        await self.hub.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.producer.stop()
        await self.redis.aclose()
