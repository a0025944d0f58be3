"""Event-id claims racing on a real Redis Cluster: copies of one request, claimed at once
(as gateways behind a load balancer without stickiness would), never both win an id."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from stream.core.models import ViewerHeartbeat
from stream.local.embedded import EmbeddedStack
from stream.store.connect import connect
from stream.store.eventids import claim_ids

pytestmark = pytest.mark.integration

COPIES, ROUNDS = 3, 200


async def test_two_copies_claimed_at_once_on_a_cluster_never_both_win_an_id(
        redis_cluster: EmbeddedStack) -> None:
    clients = [await connect(redis_cluster.redis_url) for _ in range(COPIES)]
    run = uuid.uuid4().hex[:8]
    doubled, refused = 0, 0
    try:
        for n in range(ROUNDS):
            # 20 ids spread over the three masters, the request marks on others.
            events = [(i, ViewerHeartbeat(event_id=f"race-{run}-{n}-{i}", room_id="r",
                                          viewer_id="v", ts=1)) for i in range(20)]
            sides = await asyncio.gather(*(
                claim_ids(clients[c], events, request=f"{c}-{run}-{n}", ttl_s=60)
                for c in range(COPIES)))
            won = Counter(e.event_id for side in sides for _, e in side[0])
            doubled += sum(k - 1 for k in won.values())
            refused += sum(len(side[2]) for side in sides)
    finally:
        for client in clients:
            await client.aclose()
    # Each id went to one copy; the others saw it live (pending: told to retry later).
    # The window this guards (a claim seen while its request's mark is not, README Open
    # gaps) is microseconds wide: 200 rounds of 3 copies passed on the old two-key code
    # too, so this shows the claims hold under races, not that the old race is gone.
    assert doubled == 0
    assert refused == ROUNDS * 20 * (COPIES - 1)
