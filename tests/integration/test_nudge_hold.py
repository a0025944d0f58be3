"""Nudges held for a viewer without an open socket: delivered on reconnect, each once
(two tabs, a second gateway, a gateway restart, a republish), expired after the hold."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from helpers import running_gateway
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import Nudge
from stream.gateway import nudgefeed
from stream.store import keys, nudgebox, scripts

pytestmark = pytest.mark.integration


def now_ms() -> int:
    return int(time.time() * 1000)


def a_nudge(room: str, viewer: str, *, rule: str = "dwell-3min", ts: int | None = None) -> Nudge:
    return Nudge(viewer_id=viewer, room_id=room, rule_id=rule, sku="germ-rice-5kg",
                 message="看到您关注【有机胚芽米】", variant="treatment", channel="live_popup",
                 ts=now_ms() if ts is None else ts)


async def fire(redis: Redis, *nudges: Nudge, held_at: int | None = None,
               hold_s: int = 60) -> None:
    """What the worker does with a treatment nudge: hold it, then publish it."""
    async with redis.pipeline(transaction=False) as pipe:
        await nudgebox.Holder(redis).hold(
            pipe, nudges, now_ms=now_ms() if held_at is None else held_at, hold_s=hold_s)
        for n in nudges:
            pipe.publish(keys.NUDGE_CHANNEL, encode(n))
        await scripts.execute(pipe)


async def nudges_within(ws: aiohttp.ClientWebSocketResponse,
                        seconds: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            async for msg in ws:
                data = msg.json()
                if data["type"] == "nudge":
                    got.append(data)
    except TimeoutError:
        pass
    return got


async def wait_until(cond: Any, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def ws_url(base: str, room: str, viewer: str, tokens: Tokens) -> str:
    return f"{base}/v1/rooms/{room}/ws?viewer={viewer}&token={tokens.viewer_token(viewer)}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_held_nudge_arrives_on_reconnect_once_even_after_a_gateway_restart(
        settings: Settings, redis: Redis, session: aiohttp.ClientSession) -> None:
    room, viewer = f"r-{uuid.uuid4().hex[:8]}", "v-away"
    nudge = a_nudge(room, viewer)
    async with running_gateway(settings) as (_, url, tokens):
        await fire(redis, nudge)  # nobody connected: held
        async with session.ws_connect(ws_url(url, room, viewer, tokens)) as ws:
            got = await nudges_within(ws, 1.0)
        assert [(g["id"], g["message"]) for g in got] == [(nudgebox.nudge_id(nudge),
                                                           nudge.message)]
        # A second tab later, and the worker republishing it (at-least-once): nothing.
        async with session.ws_connect(ws_url(url, room, viewer, tokens)) as ws:
            await fire(redis, nudge)
            assert await nudges_within(ws, 1.0) == []
    async with running_gateway(settings, tokens=tokens) as (_, url, _), \
            session.ws_connect(ws_url(url, room, viewer, tokens)) as ws:  # restarted
        await fire(redis, nudge)
        assert await nudges_within(ws, 1.0) == []
        later = a_nudge(room, viewer, rule="cart-unpaid-5min")
        await fire(redis, later)  # a new one still comes, live
        assert [g["rule_id"] for g in await nudges_within(ws, 2.0)] == ["cart-unpaid-5min"]
    assert await redis.hlen(keys.held_nudges(room, viewer)) == 0


async def test_two_tabs_on_two_gateways_show_a_live_nudge_once(
        settings: Settings, redis: Redis, session: aiohttp.ClientSession) -> None:
    room, viewer = f"r-{uuid.uuid4().hex[:8]}", "v-tabs"
    async with running_gateway(settings) as (gw1, url1, tokens), \
            running_gateway(settings, tokens=tokens) as (gw2, url2, _):
        tabs = [await session.ws_connect(ws_url(url, room, viewer, tokens))
                for url in (url1, url1, url2)]
        for tab in tabs:
            assert (await tab.receive_json(timeout=5))["type"] == "snapshot"
        assert gw1.relay is not None and gw2.relay is not None
        relays = (gw1.relay, gw2.relay)
        await wait_until(lambda: _true([r.listeners() for r in relays] == [2, 1]))
        nudges = [a_nudge(room, viewer, rule=f"rule-{i}") for i in range(5)]
        await fire(redis, *nudges)
        got = await asyncio.gather(*(nudges_within(tab, 1.5) for tab in tabs))
        for tab in tabs:
            await tab.close()
    ids = [g["id"] for tab in got for g in tab]
    assert sorted(ids) == sorted(nudgebox.nudge_id(n) for n in nudges)  # each once in all


async def _true(value: bool) -> bool:
    return value


async def test_a_nudge_held_past_the_hold_is_dropped_and_counted_expired(
        settings: Settings, redis: Redis, session: aiohttp.ClientSession) -> None:
    settings = msgspec.structs.replace(settings, nudge_hold_s=2)
    room = f"r-{uuid.uuid4().hex[:8]}"
    async with running_gateway(settings) as (_, url, tokens):
        # One that waited too long for a reconnect is dropped by the connect itself ...
        await fire(redis, a_nudge(room, "v-late"), held_at=now_ms() - 3_000, hold_s=2)
        async with session.ws_connect(ws_url(url, room, "v-late", tokens)) as ws:
            assert await nudges_within(ws, 1.0) == []
        stats = keys.stats(room)
        assert await redis.hget(stats, nudgebox.expired_field("dwell-3min")) == b"1"
        # ... and one whose viewer never comes back by the gateway's sweep, once.
        await fire(redis, a_nudge(room, "v-gone"), hold_s=2)
        await wait_until(lambda: _expired_is(redis, stats, b"2"))
        await asyncio.sleep(1.5)  # more sweeps (every second) must not count it again
        assert await redis.hget(stats, nudgebox.expired_field("dwell-3min")) == b"2"
        async with session.ws_connect(ws_url(url, room, "v-gone", tokens)) as ws:
            assert await nudges_within(ws, 1.0) == []


async def _expired_is(redis: Redis, stats: str, value: bytes) -> bool:
    return bool(await redis.hget(stats, nudgebox.expired_field("dwell-3min")) == value)


async def test_a_claim_released_goes_to_the_next_socket(redis: Redis) -> None:
    room = f"r-{uuid.uuid4().hex[:8]}"
    box = nudgebox.NudgeBox(redis, hold_s=60)
    nudge = a_nudge(room, "v-flaky")
    await fire(redis, nudge)
    assert await box.claim(nudge, now_ms=now_ms()) == 1
    assert await box.claim(nudge, now_ms=now_ms()) == 0  # shown: never twice
    await box.release(nudge, held_at_ms=now_ms())  # its socket closed before the send
    held = await box.drain(room, "v-flaky", now_ms=now_ms())
    assert [msgspec.json.decode(h, type=Nudge) for h in held] == [nudge]
    assert await box.drain(room, "v-flaky", now_ms=now_ms()) == []


async def test_the_expiry_sweep_does_not_outlive_the_relays_stop(
        redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's Redis call is shielded from the cancel (redis-py can swallow one), so
    `stop` must wait for it: left running it outlived the gateway's Redis client and died
    unseen ("Task exception was never retrieved", seen at a gateway's stop in the backlog
    test). Sweeping back to back, a stop nearly always lands mid-call."""
    monkeypatch.setattr(nudgefeed, "SWEEP_EVERY_S", 0)
    box = nudgebox.NudgeBox(redis, hold_s=60)

    def sweeps() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__qualname__", "") == "NudgeBox.sweep"]

    for _ in range(10):
        relay = nudgefeed.NudgeRelay(box)
        await relay.start()
        await asyncio.sleep(0.02)
        await relay.stop()
        assert not [t for t in sweeps() if not t.done()], "a sweep still running after stop"


async def test_one_call_holds_a_rounds_nudges_of_several_rooms_each_once(redis: Redis) -> None:
    """The worker holds a round's nudges in one script call per room: each viewer's held
    hash, the room's due list and the gateways' room list, with the first time kept when
    a republished nudge is held again."""
    r1, r2 = f"rh-{uuid.uuid4().hex[:6]}", f"rh-{uuid.uuid4().hex[:6]}"
    nudges = [a_nudge(r1, "v1", ts=1_000), a_nudge(r1, "v2", ts=1_000),
              a_nudge(r2, "v1", ts=2_000)]
    await fire(redis, *nudges, held_at=5_000)
    await fire(redis, nudges[0], held_at=9_000)  # a republish: the first hold stands
    for n in nudges:
        held = await redis.hgetall(keys.held_nudges(n.room_id, n.viewer_id))
        assert held == {nudgebox.nudge_id(n).encode(): b"5000|" + encode(n)}
    assert await redis.zrange(keys.held_due(r1), 0, -1, withscores=True) == [
        (b"v1 dwell-3min|1000", 5000.0), (b"v2 dwell-3min|1000", 5000.0)]
    assert await redis.ttl(keys.held_due(r2)) > 60
    assert await redis.zscore(keys.HELD_ROOMS, r1) == 9000.0
    assert await redis.zscore(keys.HELD_ROOMS, r2) == 5000.0
