"""`POST /v1/events`: auth, strict validation, dedupe by event id, envelopes to Kafka.

Validation happens here so a client learns at once which item was wrong and why;
every refused item is also written to the dead-letter topic for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import Counter

from stream.core.auth import bearer
from stream.core.codec import BodyError, clock_error, decode_events, encode
from stream.core.deadletters import dead_letter, room_of
from stream.core.models import Event, HostEvent, Origin, StockSet
from stream.core.topics import Topics, key_of, partition_for
from stream.gateway import replies
from stream.gateway.appkeys import (
    HOST_LOG,
    INVENTORY,
    PENDING,
    PRODUCER,
    REDIS,
    SETTINGS,
    TOKENS,
    TOPICS,
)
from stream.gateway.producer import EnvelopeProducer
from stream.store import eventids, keys
from stream.store.connect import Client, is_transient

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _unless_redis_away(message: str, *args: object) -> Iterator[None]:
    """Run the block; a transient Redis error in it is logged (`message % (*args, exc)`)
    and swallowed, any other error goes on up. For the writes past Kafka's ack, where a
    503 would make the client send its events again."""
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning(message, *args, exc)

EVENTS_IN = Counter("lc_gateway_events_total", "Events posted to the gateway", ["outcome"])

# A request still writing the same ids is waited for, briefly (see eventids.claim_ids).
PENDING_WAITS, PENDING_WAIT_S = 40, 0.05


async def post_events(request: web.Request) -> web.Response:
    app = request.app
    settings, topics = app[SETTINGS], app[TOPICS]
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        return replies.error(401, "missing bearer token")
    role = app[TOKENS].role(token)
    if role is None:
        return replies.error(401, "unknown token")
    try:
        # A body that trickles in (or never comes) must not hold the connection open.
        async with asyncio.timeout(settings.read_timeout_s):
            body = await request.read()
    except TimeoutError:
        return replies.error(408, f"body did not arrive within {settings.read_timeout_s} s "
                                  "(LIVECOMMERCE_READ_TIMEOUT_S)")
    except web.HTTPRequestEntityTooLarge:
        return replies.error(413, f"body over {settings.max_body_bytes} bytes; "
                                  "send smaller batches")
    try:
        decoded = decode_events(body)
    except BodyError as exc:
        return replies.error(400, str(exc))

    forbidden = [i for i, ev in decoded.events if type(ev).role != role]
    if forbidden:
        i = forbidden[0]
        kind = next(type(ev) for j, ev in decoded.events if j == i)
        return replies.error(403, f"[{i}] {kind.__struct_config__.tag} needs a {kind.role} "
                                  f"token, this one is {role}; nothing was accepted")

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

    request_id = uuid.uuid4().hex
    claim = functools.partial(eventids.claim_ids, app[REDIS], request=request_id,
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
        await eventids.release_ids(app[REDIS], fresh)
        return replies.retry_later(f"{len(pending)} events are still being written by an "
                                   "earlier request (or one that failed half-way); retry")
    write = asyncio.ensure_future(_produce(app[PRODUCER], topics, settings.partitions, fresh))
    try:
        # Shielded: past the timeout the write goes on, and decides these ids' fate.
        await asyncio.wait_for(asyncio.shield(write), settings.produce_timeout_ms / 1000)
    except TimeoutError:
        # The broker cannot ack now (paused, a leader moving). The record may still be
        # written, so the ids stay claimed and this request live until the write ends: a
        # retry meanwhile waits and gets 503, then "duplicate" once it is in Kafka.
        task = asyncio.create_task(_settle(app, write, request_id, fresh))
        app[PENDING].add(task)
        task.add_done_callback(app[PENDING].discard)
        log.warning("Kafka did not ack %d events within %d ms; answering 503",
                    len(fresh), settings.produce_timeout_ms)
        return replies.retry_later(f"Kafka did not ack within {settings.produce_timeout_ms} "
                                   "ms; retry")
    except Exception as exc:
        # Not written: release the ids so the client's retry is not refused as a duplicate.
        await eventids.release_ids(app[REDIS], fresh)
        log.warning("produce failed: %r", exc)
        return replies.retry_later(f"could not write to Kafka ({type(exc).__name__}); retry")
    await _after_write(app, request_id, fresh)
    await _dead_letter(app[PRODUCER], app[REDIS], topics, rejected, now_ms,
                       produce_timeout_s=settings.produce_timeout_ms / 1000)
    answer = sorted(
        [(i, e) for i, e, _ in rejected]
        + [(i, "event_id: duplicate of an event already accepted - at `$.event_id`")
           for i, _ in duplicates])
    EVENTS_IN.labels("accepted").inc(len(fresh))
    EVENTS_IN.labels("rejected").inc(len(rejected))
    EVENTS_IN.labels("duplicate").inc(len(duplicates))
    return replies.json_response({"accepted": len(fresh),
                                  "rejected": [{"index": i, "error": e} for i, e in answer]},
                                 status=202)


Pairs = list[tuple[int, Event]]


async def _after_write(app: web.Application, request: str, fresh: Pairs) -> None:
    """What follows the broker's ack: the request is written, host events and stock
    loads are in Redis (before the 202, when the ack came in time)."""
    # In Kafka now: from here a 503 would make the client send them again, so Redis being
    # away only costs what Redis adds (the worker's host path fills the room log too).
    with _unless_redis_away("accepted events written to Kafka, Redis away: %r"):
        await eventids.mark_written(app[REDIS], request, app[SETTINGS].dedupe_ttl_s)
        # Host events reach the room log before the 202: an order accepted after a segment
        # starts then sees that segment, even if the host topic is read later.
        await app[HOST_LOG].append([e for _, e in fresh if isinstance(e, HostEvent)])
        # Stock loads reach Redis before the 202 too: host and order events travel on
        # different topics, and a worker catching up reads the orders first (all 20
        # orders of a backlog were refused `unknown_sku` in 5 of 7 runs before this).
        await app[INVENTORY].load([e for _, e in fresh if isinstance(e, StockSet)])


async def _settle(app: web.Application, write: asyncio.Future[None], request: str,
                  fresh: Pairs) -> None:
    """Wait out a write answered 503: keep its request live (a retry then waits instead
    of taking the ids over and writing them twice), then mark it written or release."""
    redis = app[REDIS]
    while not write.done():
        with _unless_redis_away("could not keep request %s live: %r", request):
            await eventids.keep_live(redis, request)
        await asyncio.wait([write], timeout=eventids.LIVE_TTL_S / 3)
    if write.exception() is None:
        await _after_write(app, request, fresh)
        return
    log.warning("produce failed after the 503: %r", write.exception())
    with _unless_redis_away("could not release ids of request %s: %r", request):
        await eventids.release_ids(redis, fresh)


async def _produce(producer: EnvelopeProducer, topics: Topics, partitions: int,
                   events: list[tuple[int, Event]]) -> None:
    waiters = [
        producer.add(topics.for_role(type(event).role),
                     partition_for(key_of(event), partitions), encode(event))
        for _, event in events
    ]
    if waiters:
        await asyncio.gather(*waiters)


async def _dead_letter(producer: EnvelopeProducer, redis: Client, topics: Topics,
                       rejected: list[tuple[int, str, bytes]], now_ms: int, *,
                       produce_timeout_s: float) -> None:
    if not rejected:
        return
    letters = [dead_letter(raw, error, Origin(source="gateway", index=index), now_ms=now_ms)
               for index, error, raw in rejected]
    sends = asyncio.gather(*(producer.send_one(topics.dead_letters, x) for x in letters))
    try:
        # Operators' copy, not the client's answer: past the timeout it goes on alone.
        await asyncio.wait_for(asyncio.shield(sends), produce_timeout_s)
    except TimeoutError:
        sends.add_done_callback(lambda f: f.cancelled() or f.exception())
        log.warning("%d dead letters still waiting for Kafka", len(letters))
    with _unless_redis_away("%d dead letters written, not counted (Redis away): %r",
                            len(letters)):
        async with redis.pipeline(transaction=False) as pipe:
            for _, _, raw in rejected:
                pipe.hincrby(keys.stats(room_of(raw)), "dead_letters", 1)
            await pipe.execute()
