"""Pipelines with scripts: asked about once per pool, and reloaded after Redis lost them."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from stream.store import scripts

pytestmark = pytest.mark.integration

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def run(redis: Redis, script: object, by: int) -> list[object]:
    async with redis.pipeline(transaction=False) as pipe:
        await script(keys=["lc:{t}:scripts"], args=[by], client=pipe)  # type: ignore[operator]
        return await scripts.execute(pipe)


async def test_scripts_are_asked_about_once_and_reloaded_when_lost(redis: Redis) -> None:
    await redis.delete("lc:{t}:scripts")
    script = redis.register_script(SCRIPT)
    before = (await redis.info("commandstats")).get("cmdstat_script|exists", {}).get("calls", 0)
    assert await run(redis, script, 1) == [1]
    assert await run(redis, script, 2) == [3]
    assert await run(redis, script, 3) == [6]
    after = (await redis.info("commandstats")).get("cmdstat_script|exists", {}).get("calls", 0)
    assert after - before == 1  # the first pipeline only

    await redis.script_flush()  # as after a restart without data
    with pytest.raises(scripts.ScriptsLost):
        await run(redis, script, 4)
    assert await run(redis, script, 5) == [11]  # the retry loads it again; nothing ran twice
