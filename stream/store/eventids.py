"""Event-id claims in Redis: how the gateway refuses a duplicate only once the first
copy really is in Kafka (docs/decisions.md, "Duplicates").

Each `event_id` is claimed for one request (`SET NX`, `dedupe_ttl_s`); the request is
*live* while it works and *written* once Kafka acked its events.
"""

from __future__ import annotations

from stream.core.models import Event
from stream.store import keys
from stream.store.connect import Client

# A retry is refused as a duplicate only when the first copy really is in Kafka; a
# request still writing the same ids is waited for, briefly (see claim_ids).
LIVE_TTL_S = 15
_LEGACY = {"1"}  # claims from before requests were named: written

Pairs = list[tuple[int, Event]]


LIVE, WRITTEN = b"live", b"written"


async def claim_ids(redis: Client, events: Pairs, *, request: str,
                    ttl_s: int) -> tuple[Pairs, Pairs, Pairs]:
    """Claim each event_id for `request` (SET NX): (fresh, written before, pending).

    A claimed id names its request. That request is *written* once Kafka acked its
    events, *live* while it works (a short TTL), neither if it died half-way (Redis went
    away): then its ids are taken over, as they cannot be in Kafka. One command per
    event, two round trips per request.
    """
    if not events:
        return [], [], []
    # Live before any claim is made, in a round trip of its own: a cluster pipeline runs
    # its commands on several masters in no set order, so a claim could be seen before
    # its request's mark, the request taken for dead and its ids taken over by a
    # concurrent copy (a duplicate accepted by two gateways: 5,251 events of 5,250).
    await redis.set(keys.request(request), LIVE, ex=LIVE_TTL_S)
    async with redis.pipeline(transaction=False) as pipe:
        for _, event in events:
            pipe.set(keys.seen_event(event.event_id), request, nx=True, ex=ttl_s, get=True)
        before = await pipe.execute()
    # Our own request's name comes back when the SET ran twice: redis-py's cluster pipeline
    # re-sends, after a node failed, every command whose answer was falsy (a fresh claim
    # answers None). The id is ours; dropping it lost 22 of 3,000 events in a failover.
    fresh = [pair for pair, old in zip(events, before, strict=True)
             if old is None or old.decode() == request]
    taken = [(pair, old.decode()) for pair, old in zip(events, before, strict=True)
             if old is not None and old.decode() != request]
    if not taken:
        return fresh, [], []
    owners = sorted({owner for _, owner in taken})
    async with redis.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.get(keys.request(owner))
        state = dict(zip(owners, await pipe.execute(), strict=True))
    written = [pair for pair, owner in taken if state[owner] == WRITTEN or owner in _LEGACY]
    pending = [pair for pair, owner in taken if state[owner] == LIVE]
    dead = [(pair, owner) for pair, owner in taken
            if state[owner] is None and owner not in _LEGACY]
    if dead:  # take over, unless another request just did (GET says who had it)
        async with redis.pipeline(transaction=False) as pipe:
            for (_, event), _ in dead:
                pipe.set(keys.seen_event(event.event_id), request, xx=True, ex=ttl_s, get=True)
            swapped = await pipe.execute()
        for (pair, owner), old in zip(dead, swapped, strict=True):
            mine = old is not None and old.decode() == owner
            (fresh if mine else pending).append(pair)  # not mine: settled on the next look
    return fresh, written, pending


async def keep_live(redis: Client, request: str) -> None:
    """The request still works (its write waits for the broker): its ids stay its own."""
    await redis.set(keys.request(request), LIVE, ex=LIVE_TTL_S)


async def mark_written(redis: Client, request: str, ttl_s: int) -> None:
    """From live to written in one command: never neither in between."""
    await redis.set(keys.request(request), WRITTEN, ex=ttl_s)


async def release_ids(redis: Client, events: Pairs) -> None:
    if events:
        await redis.delete(*(keys.seen_event(e.event_id) for _, e in events))
