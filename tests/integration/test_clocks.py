"""A room's clocks in Redis (stream/store/clocks.py): every clock of a room moves in one
call, each only forward, each keeping the wall time of its own last move."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from stream.store.clocks import RoomClocks

pytestmark = pytest.mark.integration


async def test_each_clock_moves_forward_only_with_its_own_wall_time(redis: Redis) -> None:
    room = f"clk-{uuid.uuid4().hex[:8]}"
    clocks = RoomClocks(redis)

    async def advance(**moves: object) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            await clocks.advance(pipe, room, **moves)  # type: ignore[arg-type]
            assert await pipe.execute() == [1]  # one call, whatever it moves

    await advance(wall_ms=1_000, room_ms=500, stock_ms=400, partitions={0: 300, 3: 200})
    # Later wall time, older events: room and partition 3 stay; stock and partition 0 move.
    await advance(wall_ms=2_000, room_ms=499, stock_ms=450, partitions={0: 350, 3: 100})

    assert await clocks.now(room, wall_now_ms=2_000) == 500 + 1_000
    assert await clocks.now(room, wall_now_ms=2_000, clock="stock") == 450
    assert await clocks.partition_nows(room, wall_now_ms=2_500) == {0: 350 + 500,
                                                                   3: 200 + 1_500}


async def test_an_advance_that_moves_nothing_is_refused(redis: Redis) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        with pytest.raises(ValueError, match="no clock"):
            await RoomClocks(redis).advance(pipe, "clk-none", wall_ms=1, partitions={})
