"""Follow-ups are kept in Redis once, by the claim that makes them once-only."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from redis.asyncio import Redis

from stream.core.models import FollowUp
from stream.store import keys, scripts
from stream.store.claims import Claims, claim_item, once_id

pytestmark = pytest.mark.integration


async def test_a_follow_up_is_kept_once_on_its_broadcasts_books(redis: Redis) -> None:
    room = f"fu-{uuid.uuid4().hex[:6]}"
    claims = Claims(redis)
    followups = [FollowUp(viewer_id=f"v{i}", room_id=room, segment="watched_only",
                          action="trial_pack_link", due_at=1_700_000_000_000 + i)
                 for i in range(3)]
    answers = []
    for attempt in range(2):  # the second round is a replay: nothing new
        async with redis.pipeline(transaction=False) as pipe:
            await claims.claim(pipe, room, mark=f"p:1:w:{attempt + 1}", book=1,
                               items=[claim_item(f, once_id(f)) for f in followups])
            answers.append((await scripts.execute(pipe))[0])
        await redis.hset(keys.acked(room), "w", attempt + 1)
    assert answers == [[1, 1, 1], [0, 0, 0]]
    kept = await redis.hgetall(keys.followups(room, 1))
    assert {k.decode(): msgspec.json.decode(v, type=FollowUp) for k, v in kept.items()} == {
        f"{f.viewer_id}|{f.due_at}": f for f in followups}
    assert await redis.hlen(keys.followups(room, 0)) == 0
    assert int(await redis.hget(keys.stats(room, 1), "followups")) == 3
