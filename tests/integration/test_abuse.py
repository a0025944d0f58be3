"""Abuse at the gateway: per-token rate limits (429), and what a viewer token may not read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import orjson
import pytest
from helpers import ev, running_gateway

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.gateway.ratelimit import parse

pytestmark = pytest.mark.integration


class Open(msgspec.Struct):
    url: str
    tokens: Tokens
    session: aiohttp.ClientSession


async def _open(settings: Settings) -> AsyncIterator[Open]:
    async with running_gateway(settings) as (_, url, tokens), aiohttp.ClientSession() as session:
        yield Open(url, tokens, session)


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Open]:
    # Per minute, so the test cannot pass or fail on how fast the machine is.
    settings = msgspec.structs.replace(settings, rate_limit="5/minute",
                                       viewer_rate_limit="2/minute")
    async for gw in _open(settings):
        yield gw


@pytest.fixture
async def default(settings: Settings) -> AsyncIterator[Open]:
    async for gw in _open(settings):
        yield gw


async def _post(gw: Open, token: str) -> aiohttp.ClientResponse:
    async with gw.session.post(f"{gw.url}/v1/events", data=orjson.dumps([ev("viewer.heartbeat")]),
                               headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        return resp


async def test_rate_limit_is_per_token_with_retry_after(limited: Open) -> None:
    platform = limited.tokens.for_role("platform")
    statuses = [(await _post(limited, platform)).status for _ in range(5)]
    assert statuses == [202] * 5
    refused = await _post(limited, platform)
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another token has its own budget; reads with the limited token are refused too.
    async with limited.session.get(f"{limited.url}/v1/viewers/v1/tags", headers={
            "Authorization": f"Bearer {platform}"}) as resp:
        assert resp.status == 429
    assert (await _post(limited, limited.tokens.for_role("commerce"))).status == 403


async def test_unknown_tokens_and_anonymous_reads_are_not_counted(limited: Open) -> None:
    # Made-up tokens get their 401 every time: they never reach (or fill) the counters.
    assert [(await _post(limited, "made-up")).status for _ in range(8)] == [401] * 8
    for _ in range(8):
        async with limited.session.get(f"{limited.url}/v1/rooms/r1/stock") as resp:
            assert resp.status == 200


async def test_viewer_token_websocket_connects_are_limited(limited: Open) -> None:
    token = limited.tokens.viewer_token("alice")
    url = f"{limited.url}/v1/rooms/r1/ws?viewer=alice&token={token}"
    for _ in range(2):
        async with limited.session.ws_connect(url) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
    async with limited.session.get(url) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    # Bob is not Alice: his budget is untouched.
    bob = limited.tokens.viewer_token("bob")
    async with limited.session.ws_connect(
            f"{limited.url}/v1/rooms/r1/ws?viewer=bob&token={bob}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"


def flip_last(token: str) -> str:
    """`token` with its last hex digit changed (appending "0" is no change 1 time in 16)."""
    return token[:-1] + ("1" if token[-1] == "0" else "0")


async def test_a_viewer_token_opens_only_its_own_nudges(default: Open) -> None:
    base = f"{default.url}/v1/rooms/r1/ws?viewer=alice&token="
    for token in (default.tokens.viewer_token("bob"),           # another viewer's token
                  default.tokens.for_role("commerce"),          # a role token is no viewer's
                  flip_last(default.tokens.viewer_token("alice"))):
        async with default.session.get(base + token) as resp:
            assert resp.status == 403, token
    async with default.session.ws_connect(base + default.tokens.viewer_token("alice")) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"


async def test_no_token_but_commerce_reads_tags(default: Open) -> None:
    tokens = default.tokens
    for token in (tokens.for_role("platform"), tokens.for_role("host")):
        async with default.session.get(f"{default.url}/v1/viewers/alice/tags",
                                       headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 403
    # Neither a viewer's own token (as bearer or in the query) opens the viewer's tags.
    own = tokens.viewer_token("alice")
    async with default.session.get(f"{default.url}/v1/viewers/alice/tags",
                                   headers={"Authorization": f"Bearer {own}"}) as resp:
        assert resp.status == 401
    async with default.session.get(
            f"{default.url}/v1/viewers/alice/tags?viewer=alice&token={own}") as resp:
        assert resp.status == 401
    async with default.session.get(f"{default.url}/v1/viewers/alice/tags", headers={
            "Authorization": f"Bearer {tokens.for_role('commerce')}"}) as resp:
        assert resp.status == 200


def test_parse_rate_limits() -> None:
    assert parse("off") == [] and parse("") == []
    assert [(i.amount, i.get_expiry()) for i in parse("2000/second;50000/minute")] == [
        (2000, 1), (50000, 60)]
    with pytest.raises(ValueError, match="rate limit"):
        parse("lots")


async def test_a_burst_of_concurrent_requests_waits_for_redis_not_fails(default: Open) -> None:
    # 400 viewers leaving at once: more requests in flight than Redis connections.
    token = default.tokens.for_role("platform")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def post() -> int:
            async with session.post(f"{default.url}/v1/events",
                                    data=orjson.dumps([ev("viewer.left")]),
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                return resp.status

        statuses = await asyncio.gather(*(post() for _ in range(400)))
    assert {s: statuses.count(s) for s in set(statuses)} == {202: 400}
