"""Gateway reads for viewers: tags (commerce token only) and nudges on the own WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from helpers import running_gateway
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import Nudge
from stream.core.topics import partition_for
from stream.engine.state import ViewerState
from stream.gateway.app import Gateway
from stream.store import keys

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(settings: Settings
                  ) -> AsyncIterator[tuple[str, Tokens, Redis, Settings, Gateway]]:
    async with running_gateway(settings) as (gw, url, tokens):
        yield url, tokens, gw.redis, settings, gw


async def test_tags_are_for_the_commerce_token_only(gateway) -> None:  # type: ignore[no-untyped-def]
    url, tokens, redis, settings, _ = gateway
    await redis.sadd(keys.viewer_rooms("v-tags"), "r1")
    state = ViewerState(tags={"watch_depth": ["<5min"], "interaction": ["liked"]})
    await redis.hset(keys.viewer_states(settings.topic_prefix,
                                        partition_for("v-tags", settings.partitions)),
                     "r1|v-tags", msgspec.msgpack.encode(state))
    async with aiohttp.ClientSession() as session:
        async def get(token: str | None) -> tuple[int, dict]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(f"{url}/v1/viewers/v-tags/tags", headers=headers) as resp:
                return resp.status, await resp.json()

        assert (await get(None))[0] == 401
        assert (await get(tokens.for_role("platform")))[0] == 403
        assert (await get(tokens.viewer_token("v-tags")))[0] == 401  # a viewer token is no role
        status, body = await get(tokens.for_role("commerce"))
    assert status == 200
    assert body["tags"] == [{"room_id": "r1", "tag": "interaction", "value": "liked"},
                            {"room_id": "r1", "tag": "watch_depth", "value": "<5min"}]


async def test_nudges_reach_only_their_viewer(gateway) -> None:  # type: ignore[no-untyped-def]
    url, tokens, redis, _, gw = gateway
    room = "r-nudge"

    async def receive(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[dict]:
        got = []
        try:
            async with asyncio.timeout(seconds):
                async for msg in ws:
                    got.append(msg.json())
        except TimeoutError:
            pass
        return got

    async with aiohttp.ClientSession() as session:
        def ws_url(viewer: str, token: str | None) -> str:
            base = f"{url}/v1/rooms/{room}/ws?viewer={viewer}"
            return base + (f"&token={token}" if token else "")

        async with (session.ws_connect(ws_url("alice", tokens.viewer_token("alice"))) as alice,
                    session.ws_connect(ws_url("bob", tokens.viewer_token("bob"))) as bob,
                    session.ws_connect(ws_url("alice", None)) as anonymous):
            # Alice's and Bob's nudge feeds registered (the anonymous socket has none).
            async with asyncio.timeout(10):
                while gw.relay.listeners() < 2:
                    await asyncio.sleep(0.01)
            nudge = Nudge(viewer_id="alice", room_id=room, rule_id="dwell-3min",
                          sku="germ-rice-5kg", message="看到您关注【有机胚芽米】",
                          variant="treatment",
                          channel="live_popup", ts=1_700_000_000_000)
            await redis.publish(keys.NUDGE_CHANNEL, encode(nudge))
            got = await asyncio.gather(receive(alice, 1.0), receive(bob, 1.0),
                                       receive(anonymous, 1.0))
    kinds = [[m["type"] for m in g] for g in got]
    assert kinds[0] == ["snapshot", "nudge"]
    assert got[0][1]["rule_id"] == "dwell-3min" and got[0][1]["message"].startswith("看到")
    assert kinds[1] == ["snapshot"] and kinds[2] == ["snapshot"]
