"""The gateway when a backend fails for real: Redis away answers 503 with Retry-After (no
500, nothing written); a Kafka write that fails releases the claimed ids, so the retry
is taken, not refused as a duplicate."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from helpers import ev, read_all

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.core.topics import Topics, partition_for
from stream.gateway.app import Gateway
from stream.local.embedded import EmbeddedStack, free_port
from stream.worker.admin import ensure_topics

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def gateway(settings: Settings, tokens: Tokens) -> AsyncIterator[str]:
    gw = Gateway(settings, tokens)
    port = free_port()
    await gw.start(port=port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await gw.stop()


async def post(url: str, tokens: Tokens, events: list[dict[str, object]],
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/events", json=events,
            headers={"Authorization": f"Bearer {tokens.for_role('platform')}"}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_redis_away_is_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    """Redis goes away under a running gateway (a gateway that cannot reach Redis at
    start refuses to start at all: `stream.store.connect`)."""
    await ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                        partitions=settings.partitions)
    own = EmbeddedStack(log_dir=tmp_path / "stack")
    await own.start(kafka=False)
    try:
        away = msgspec.structs.replace(settings, redis_url=own.redis_url)
        tokens = Tokens.generate()
        async with gateway(away, tokens) as url:
            await own.stop_redis()
            status, headers, body = await post(url, tokens,
                                               [ev("viewer.joined", source="douyin")])
    finally:
        await own.stop()
    assert status == 503 and headers.get("Retry-After") == "1", (status, body)
    assert b"redis" in body
    assert await read_all(settings, [Topics(settings.topic_prefix).viewer_events]) == []


async def test_a_failed_kafka_write_releases_the_ids(settings: Settings) -> None:
    """The topics have 2 partitions; a gateway told 8 writes to one that does not exist,
    and the broker refuses it. The same event through a right gateway is then taken."""
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, topics, partitions=2)
    viewer = next(f"v{i}" for i in range(100) if partition_for(f"v{i}", 8) >= 2)
    event = ev("viewer.joined", source="douyin", viewer_id=viewer)
    tokens = Tokens.generate()
    wrong = msgspec.structs.replace(settings, partitions=8)
    async with gateway(wrong, tokens) as url:
        status, _, body = await post(url, tokens, [event])
    assert status == 503 and b"could not write to Kafka" in body, (status, body)
    right = msgspec.structs.replace(settings, partitions=2)
    async with gateway(right, tokens) as url:
        status, _, body = await post(url, tokens, [event])
        assert (status, msgspec.json.decode(body)) == (202, {"accepted": 1, "rejected": []})
        status, _, body = await post(url, tokens, [event])  # and now it is a duplicate
        assert status == 202 and b"duplicate" in body
    assert len(await read_all(settings, [topics.viewer_events])) == 1
