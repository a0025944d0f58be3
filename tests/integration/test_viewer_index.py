"""The room index beside the viewer states: how a viewer's tags are found by viewer.

The script that saves the states (stream/store/viewerstate.py) also keeps, per input
partition, viewer -> the rooms with a saved state; a worker sends each (room, viewer) pair
once, where it used to send one SADD per pair.
"""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from stream.core.topics import partition_for
from stream.engine.state import ViewerState, encode_state
from stream.store import keys, scripts
from stream.store.currenttags import held_tags
from stream.store.viewerstate import ViewerStates

pytestmark = pytest.mark.integration

PARTITIONS = 8


def blob(**tags: list[str]) -> bytes:
    return encode_state(ViewerState(tags=dict(tags)))


async def save(states: ViewerStates, redis: Redis, viewer: str,
               blobs: dict[tuple[str, str], bytes]) -> list[tuple[str, str]]:
    """One save of `blobs` on the viewer's partition, as Engagement._persist runs it."""
    async with redis.pipeline(transaction=False) as pipe:
        added = await states.save(pipe, partition_for(viewer, PARTITIONS), blobs, {})
        await scripts.execute(pipe)
    return added


async def test_a_viewers_rooms_are_indexed_once_and_their_tags_found(redis: Redis) -> None:
    deployment, viewer = f"ix{uuid.uuid4().hex[:6]}.", "v-1"
    states = ViewerStates(redis, deployment=deployment)
    first = {("r1", viewer): blob(interaction=["liked"]), ("r2", viewer): blob(visitor=["new"])}
    assert sorted(await save(states, redis, viewer, first)) == [("r1", viewer), ("r2", viewer)]
    states.indexed([("r1", viewer), ("r2", viewer)])
    # Saved again (a viewer changed in the next second): the index is not sent again.
    assert await save(states, redis, viewer, {("r1", viewer): blob(interaction=["shared"])}) == []
    index = keys.viewer_room_index(deployment, partition_for(viewer, PARTITIONS))
    assert await redis.hget(index, viewer) == b"r1\nr2"
    assert await held_tags(redis, viewer, partitions=PARTITIONS, deployment=deployment) == [
        ("r1", "interaction", "shared"), ("r2", "visitor", "new")]


async def test_a_pair_sent_twice_is_indexed_once(redis: Redis) -> None:
    """Two workers (a takeover), or a save sent again after a failure, add nothing twice."""
    deployment, viewer = f"ix{uuid.uuid4().hex[:6]}.", "v-2"
    one = ViewerStates(redis, deployment=deployment)
    other = ViewerStates(redis, deployment=deployment)
    await save(one, redis, viewer, {("r1", viewer): blob(source=["public"])})
    # Not noted as indexed (its pipeline "failed"): the next save sends the pair again.
    assert await save(one, redis, viewer, {("r1", viewer): blob(source=["public"])}) == [
        ("r1", viewer)]
    await save(other, redis, viewer, {("r1", viewer): blob(source=["public"]),
                                      ("r10", viewer): blob(source=["private"])})
    index = keys.viewer_room_index(deployment, partition_for(viewer, PARTITIONS))
    assert await redis.hget(index, viewer) == b"r1\nr10"


async def test_rooms_indexed_by_workers_of_before_are_still_found(redis: Redis) -> None:
    """Workers before session 21 kept a set per viewer (keys.viewer_rooms): read beside."""
    deployment, viewer = f"ix{uuid.uuid4().hex[:6]}.", f"v-{uuid.uuid4().hex[:6]}"
    states = ViewerStates(redis, deployment=deployment)
    await redis.sadd(keys.viewer_rooms(viewer), "old", "r1")
    await redis.hset(keys.viewer_states(deployment, partition_for(viewer, PARTITIONS)),
                     f"old|{viewer}", blob(leader=["l-9"]))
    await save(states, redis, viewer, {("r1", viewer): blob(interaction=["liked"])})
    assert await held_tags(redis, viewer, partitions=PARTITIONS, deployment=deployment) == [
        ("old", "leader", "l-9"), ("r1", "interaction", "liked")]
