"""Live stock fan-out on the real stack: snapshot, SSE, WebSocket, slow clients, reconnects."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import orjson
import pytest
from aiohttp import ClientSession, WSMsgType
from helpers import running_gateway
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.core.models import StockUpdate
from stream.gateway.app import Gateway
from stream.gateway.hub import LiveHub, Subscription
from stream.local.embedded import free_port
from stream.store import keys

pytestmark = pytest.mark.integration


@dataclass
class Live:
    gw: Gateway
    url: str
    session: ClientSession
    redis: Redis
    tokens: Tokens
    port: int


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    redis = Redis.from_url(settings.redis_url)
    async with running_gateway(settings) as (gw, url, tokens), ClientSession() as session:
        yield Live(gw, url, session, redis, tokens, int(url.rsplit(":", 1)[1]))
    await redis.aclose()


def new_room() -> str:
    return f"room-{uuid.uuid4().hex[:10]}"


def level(room: str, sku: str, version: int, available: int, *, reserved: int = 0,
          sold: int = 0) -> StockUpdate:
    return StockUpdate(room_id=room, sku=sku, available=available, reserved=reserved,
                       sold=sold, version=version, ts=int(time.time() * 1000))


async def store(redis: Redis, *updates: StockUpdate) -> None:
    """Write levels into Redis the way the inventory script keeps them."""
    async with redis.pipeline(transaction=False) as pipe:
        for u in updates:
            pipe.hset(keys.stock_prefix(u.room_id) + u.sku, mapping={
                "available": u.available, "reserved": u.reserved, "sold": u.sold,
                "version": u.version, "loaded": u.available + u.reserved + u.sold})
            pipe.sadd(keys.skus(u.room_id), u.sku)
        await pipe.execute()


async def publish(redis: Redis, *updates: StockUpdate) -> None:
    await redis.publish(keys.STOCK_CHANNEL, msgspec.json.encode(list(updates)))


async def put(redis: Redis, *updates: StockUpdate) -> None:
    """What a worker does: change Redis, then announce it."""
    await store(redis, *updates)
    await publish(redis, *updates)


class LineReader(Protocol):
    async def readline(self) -> bytes: ...


async def read_event(reader: LineReader, *, timeout: float = 5.0) -> tuple[str, Any]:
    """The next SSE event as (event, data as JSON), or ("comment", text)."""
    event, data = "message", None
    async with asyncio.timeout(timeout):
        while True:
            line = await reader.readline()
            if not line:
                raise EOFError("stream ended")
            line = line.rstrip(b"\r\n")
            if line.startswith(b":"):
                return "comment", line[1:].strip().decode()
            if not line:
                if data is not None:
                    return event, orjson.loads(data)
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value.decode()
            elif name == b"data":
                data = value


async def read_stock(reader: LineReader, *, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        event, data = await read_event(reader, timeout=timeout)
        if event == "stock":
            return data
        assert event == "comment", (event, data)


def gauge(kind: str) -> float:
    return REGISTRY.get_sample_value("lc_stock_subscribers", {"kind": kind}) or 0.0


def sku_view(u: StockUpdate) -> dict[str, Any]:
    return {"sku": u.sku, "available": u.available, "reserved": u.reserved, "sold": u.sold,
            "version": u.version}


def update_view(u: StockUpdate) -> dict[str, Any]:
    return msgspec.structs.asdict(u)


async def wait_for(cond: Any, *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- the pure keep-latest queue -----------------------------------------------------------

async def test_subscription_keeps_latest_and_never_goes_back() -> None:
    sub = Subscription("r", "sse")
    sub.offer(level("r", "a", 5, 10))          # arrived before the snapshot was read
    snapshot = sub.prime([level("r", "a", 4, 11), level("r", "b", 7, 3)])
    assert [(u.sku, u.version) for u in snapshot] == [("a", 5), ("b", 7)]
    for v in range(1, 100):
        sub.offer(level("r", "b", v, 100 - v))
    assert len(sub) == 1
    assert [u.version for u in await sub.next_batch()] == [99]
    sub.offer(level("r", "b", 98, 0))           # older than delivered: dropped
    assert len(sub) == 0
    sub.close()
    assert await sub.next_batch() == []


async def test_direct_writes_only_when_idle_and_in_order() -> None:
    sub = Subscription("r", "ws")
    sub.prime([])
    written: list[int] = []
    backed_up = False

    def direct(update: StockUpdate) -> bool:
        if backed_up:
            return False
        written.append(update.version)
        return True

    sub.direct = direct
    sub.offer(level("r", "a", 1, 10))
    assert written == [1] and len(sub) == 0       # straight to the socket, nothing queued
    backed_up = True
    sub.offer(level("r", "a", 2, 9))
    assert len(sub) == 1                          # the socket is busy: keep-latest queue
    backed_up = False
    sub.offer(level("r", "b", 1, 5))              # queued behind "a" v2, not written first
    assert written == [1] and len(sub) == 2
    assert sorted((u.sku, u.version) for u in await sub.next_batch()) == [("a", 2), ("b", 1)]
    sub.offer(level("r", "a", 2, 9))              # already delivered: dropped
    sub.offer(level("r", "a", 3, 8))
    assert written == [1, 3] and len(sub) == 0


# --- HTTP -----------------------------------------------------------------------------------

async def test_get_stock_snapshot(live: Live) -> None:
    room = new_room()
    rows = [level(room, "oil", 3, 40, reserved=2, sold=8), level(room, "rice", 1, 100)]
    await store(live.redis, *rows)
    async with live.session.get(f"{live.url}/v1/rooms/{room}/stock") as resp:
        assert resp.status == 200
        assert await resp.json() == {"room_id": room, "skus": [sku_view(u) for u in rows]}
    empty = new_room()
    async with live.session.get(f"{live.url}/v1/rooms/{empty}/stock") as resp:
        assert await resp.json() == {"room_id": empty, "skus": []}
    async with live.session.get(f"{live.url}/v1/rooms/bad%20room/stock") as resp:
        assert resp.status == 400


async def test_sse_snapshot_then_updates_never_stale(live: Live) -> None:
    room = new_room()
    await store(live.redis, level(room, "rice", 1, 100))
    async with live.session.get(f"{live.url}/v1/rooms/{room}/stock/stream") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        event, data = await read_event(resp.content)
        assert (event, data) == ("snapshot", {"room_id": room,
                                              "skus": [sku_view(level(room, "rice", 1, 100))]})
        for version in (2, 3, 4):
            update = level(room, "rice", version, 100 - version, sold=version)
            await put(live.redis, update)
            assert await read_stock(resp.content) == update_view(update)
        # Messages from a slower worker, overtaken: neither may reach the client.
        await publish(live.redis, level(room, "rice", 1, 100), level(room, "rice", 3, 55))
        fresh = level(room, "rice", 5, 90, sold=10)
        await put(live.redis, fresh)
        assert await read_stock(resp.content) == update_view(fresh)
    async with live.session.get(f"{live.url}/v1/rooms/{room}/stock") as resp:
        assert (await resp.json())["skus"] == [sku_view(fresh)]


async def test_sse_keepalive(live: Live) -> None:
    live.gw.hub.keepalive_s = 0.2
    async with live.session.get(f"{live.url}/v1/rooms/{new_room()}/stock/stream") as resp:
        assert (await read_event(resp.content))[0] == "snapshot"
        assert await read_event(resp.content, timeout=2) == ("comment", "keepalive")


async def test_websocket_snapshot_then_updates_never_stale(live: Live) -> None:
    room = new_room()
    await store(live.redis, level(room, "rice", 1, 100), level(room, "oil", 1, 20))
    url = f"{live.url}/v1/rooms/{room}/ws?viewer=v1"
    async with live.session.ws_connect(url) as ws:
        snapshot = await ws.receive_json(timeout=5)
        assert snapshot == {"type": "snapshot", "room_id": room,
                            "skus": [sku_view(level(room, "oil", 1, 20)),
                                     sku_view(level(room, "rice", 1, 100))]}
        for version in (2, 3, 4):
            update = level(room, "rice", version, 100 - version)
            await put(live.redis, update)
            assert await ws.receive_json(timeout=5) == {"type": "stock", **update_view(update)}
        await publish(live.redis, level(room, "rice", 1, 100))
        fresh = level(room, "oil", 2, 19)
        await put(live.redis, fresh)
        assert await ws.receive_json(timeout=5) == {"type": "stock", **update_view(fresh)}

    # A viewer token unlocks the per-viewer feeds; a wrong one is refused outright.
    token = live.tokens.viewer_token("v1")
    async with live.session.ws_connect(f"{url}&token={token}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
    async with live.session.get(f"{url}&token=nope") as resp:
        assert resp.status == 403


async def test_slow_client_does_not_delay_fast_one(live: Live) -> None:
    room = new_room()
    skus = ["a", "b", "c"]
    await store(live.redis, *(level(room, s, 1, 5000) for s in skus))
    path = f"/v1/rooms/{room}/stock/stream"

    # The slow client: a raw socket with tiny buffers that stops reading after the snapshot.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    slow_reader, slow_writer = await asyncio.open_connection(sock=sock, limit=1024)
    slow_writer.write(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
    while (await slow_reader.readline()).strip():
        pass  # response headers
    assert (await read_event(slow_reader))[0] == "snapshot"

    async with live.session.get(f"{live.url}{path}") as fast:
        assert (await read_event(fast.content))[0] == "snapshot"
        await wait_for(lambda: live.gw.hub.subscribers(room) == 2)
        fast_seen: dict[str, int] = {}
        fast_done = asyncio.Event()
        final = 1001

        async def read_fast() -> None:
            while True:
                data = await read_stock(fast.content, timeout=20)
                assert data["version"] > fast_seen.get(data["sku"], 0)
                fast_seen[data["sku"]] = data["version"]
                if all(fast_seen.get(s) == final for s in skus):
                    fast_done.set()

        fast_task = asyncio.create_task(read_fast())
        try:
            # Fill the pipe to the slow client until its handler is stuck in a write.
            fillers = [f"f{i:03}" for i in range(500)]
            slow: Subscription | None = None
            for round_ in range(2, 200):
                await publish(live.redis, *(level(room, f, round_, 1) for f in fillers))
                await asyncio.sleep(0.2)
                stuck = [s for s in live.gw.hub.subscriptions(room) if len(s)]
                if stuck:
                    slow = stuck[0]
                    break
            assert slow is not None, "the slow client never applied back-pressure"

            async with live.redis.pipeline(transaction=False) as pipe:
                for version in range(2, final + 1):
                    pipe.publish(keys.STOCK_CHANNEL, msgspec.json.encode(
                        [level(room, s, version, 5000 - version) for s in skus]))
                await pipe.execute()
            # The fast client is not held up by the stuck one: it gets every update (the
            # timeout only bounds a hang; fan-out latency is bench/fanout.py's to measure).
            async with asyncio.timeout(30):
                await fast_done.wait()
            # The stuck client waits with one update per SKU, the latest, nothing more.
            assert len(slow) <= len(fillers) + len(skus)
            await store(live.redis, *(level(room, s, final, 5000 - final) for s in skus))

            slow_seen: dict[str, list[int]] = {s: [] for s in skus}
            while not all(slow_seen[s] for s in skus):
                data = await read_stock(slow_reader, timeout=10)
                if data["sku"] in slow_seen:
                    slow_seen[data["sku"]].append(data["version"])
            assert slow_seen == {s: [final] for s in skus}
        finally:
            fast_task.cancel()
            slow_writer.close()


async def test_a_backed_up_websocket_gets_the_latest_of_each_sku_when_it_reads(
        live: Live) -> None:
    """A viewer's WebSocket whose client stops reading: updates wait in its subscription
    (the hub writes straight only to idle sockets), and once it reads again it gets
    every SKU's latest version, in increasing versions per SKU."""
    room = new_room()
    skus = ["a", "b", "c"]
    await store(live.redis, *(level(room, s, 1, 5000) for s in skus))
    async with live.session.ws_connect(f"{live.url}/v1/rooms/{room}/ws?viewer=v1",
                                       max_msg_size=0) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
        await wait_for(lambda: live.gw.hub.subscribers(room) == 1)
        # Not reading: aiohttp's client stops reading its socket past 64 KiB, the kernel's
        # buffers fill, then the gateway's; fill until updates wait in the subscription.
        fillers = [f"f{i:03}" for i in range(500)]
        for round_ in range(2, 400):
            await publish(live.redis, *(level(room, f, round_, 1) for f in fillers))
            await asyncio.sleep(0.05)
            if any(len(sub) for sub in live.gw.hub.subscriptions(room)):
                break
        else:
            raise AssertionError("the client never applied back-pressure")
        final = 50
        for version in range(2, final + 1):
            await put(live.redis, *(level(room, s, version, 5000 - version) for s in skus))

        seen: dict[str, list[int]] = {}
        while any(seen.get(s, [0])[-1] != final for s in skus):
            msg = await ws.receive_json(timeout=10)
            seen.setdefault(msg["sku"], []).append(msg["version"])
        for versions in seen.values():
            assert versions == sorted(set(versions))


async def test_late_joiner_gets_current_snapshot(live: Live) -> None:
    room = new_room()
    await store(live.redis, level(room, "rice", 1, 100))
    for version in range(2, 6):
        await put(live.redis, level(room, "rice", version, 100 - version, sold=version))
    current = level(room, "rice", 5, 95, sold=5)
    async with live.session.get(f"{live.url}/v1/rooms/{room}/stock/stream") as resp:
        assert await read_event(resp.content) == (
            "snapshot", {"room_id": room, "skus": [sku_view(current)]})
    async with live.session.ws_connect(f"{live.url}/v1/rooms/{room}/ws") as ws:
        assert (await ws.receive_json(timeout=5))["skus"] == [sku_view(current)]


def snapshots(source: str) -> float:
    return REGISTRY.get_sample_value("lc_stock_snapshots_total", {"source": source}) or 0.0


async def test_a_connect_storm_reads_redis_once_and_the_cache_stays_current(
        live: Live) -> None:
    room = new_room()
    await store(live.redis, level(room, "rice", 1, 100), level(room, "oil", 1, 20))
    redis0, cache0 = snapshots("redis"), snapshots("cache")
    url = f"{live.url}/v1/rooms/{room}/ws"
    first = await live.session.ws_connect(url)
    assert (await first.receive_json(timeout=5))["type"] == "snapshot"
    storm = await asyncio.gather(*(live.session.ws_connect(url) for _ in range(30)))
    for ws in storm:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
    assert snapshots("redis") - redis0 == 1
    assert snapshots("cache") - cache0 == 30
    # Changes reach the cache: a later connect's snapshot (from it) has them.
    for version in (2, 3):
        await put(live.redis, level(room, "rice", version, 100 - version, sold=version))
    await put(live.redis, level(room, "mug", 1, 5))  # a SKU loaded after the cache filled
    for _ in range(3):
        await first.receive_json(timeout=5)
    async with live.session.ws_connect(url) as late:
        assert (await late.receive_json(timeout=5))["skus"] == [
            sku_view(level(room, "mug", 1, 5)), sku_view(level(room, "oil", 1, 20)),
            sku_view(level(room, "rice", 3, 97, sold=3))]
    assert snapshots("redis") - redis0 == 1
    for ws in [first, *storm]:
        await ws.close()


async def test_disconnect_unsubscribes(live: Live) -> None:
    room = new_room()
    sse0, ws0 = gauge("sse"), gauge("ws")
    resp = await live.session.get(f"{live.url}/v1/rooms/{room}/stock/stream")
    assert (await read_event(resp.content))[0] == "snapshot"
    ws = await live.session.ws_connect(f"{live.url}/v1/rooms/{room}/ws?viewer=v9")
    assert (await ws.receive()).type == WSMsgType.TEXT
    await wait_for(lambda: live.gw.hub.subscribers(room) == 2)
    assert (gauge("sse"), gauge("ws")) == (sse0 + 1, ws0 + 1)

    resp.close()  # drops the connection, as a closed browser tab does
    await ws.close()
    await wait_for(lambda: live.gw.hub.subscribers(room) == 0)
    assert (gauge("sse"), gauge("ws")) == (sse0, ws0)


async def test_hub_stop_ends_every_stream(live: Live) -> None:
    """A gateway that is stopping ends its streams itself, so clients reconnect to
    another: the SSE response ends, and the WebSocket gets a close frame, with or
    without the per-viewer feeds beside the stock feed."""
    room = new_room()
    resp = await live.session.get(f"{live.url}/v1/rooms/{room}/stock/stream")
    assert (await read_event(resp.content))[0] == "snapshot"
    url = f"{live.url}/v1/rooms/{room}/ws?viewer=v1"
    plain = await live.session.ws_connect(url)
    viewer = await live.session.ws_connect(f"{url}&token={live.tokens.viewer_token('v1')}")
    for ws in (plain, viewer):
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
    await wait_for(lambda: live.gw.hub.subscribers(room) == 3)

    await live.gw.hub.stop()
    for ws in (plain, viewer):
        assert (await ws.receive(timeout=5)).type == WSMsgType.CLOSE
    async with asyncio.timeout(5):
        assert await resp.content.read() == b""
    await wait_for(lambda: live.gw.hub.subscribers(room) == 0)


async def test_resync_after_pubsub_connection_lost(live: Live) -> None:
    room = new_room()
    await store(live.redis, level(room, "rice", 1, 100))
    async with live.session.get(f"{live.url}/v1/rooms/{room}/stock/stream") as resp:
        assert (await read_event(resp.content))[0] == "snapshot"
        # A change whose announcement is lost with the connection...
        missed = level(room, "rice", 2, 97, sold=3)
        await store(live.redis, missed)
        await live.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # ...still reaches the client: the hub re-reads the room when it resubscribes.
        got = await read_stock(resp.content, timeout=10)
        assert {k: got[k] for k in ("sku", "available", "sold", "version")} == {
            "sku": "rice", "available": 97, "sold": 3, "version": 2}
        await wait_for(lambda: live.gw.hub.connected)
        after = level(room, "rice", 3, 96, sold=4)
        await put(live.redis, after)
        assert await read_stock(resp.content) == update_view(after)


async def test_hub_starts_without_redis() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}")
    hub = LiveHub(redis, connect_timeout_s=0.3)
    await hub.start()  # must not raise: the gateway keeps serving and retries
    assert not hub.connected
    await hub.stop()
    await redis.aclose()


async def test_direct_frames_over_http10_sse_and_long_websocket_frames(live: Live) -> None:
    room = new_room()
    sku = "s" * 64  # a frame over 125 bytes: the WebSocket 16-bit length form
    await store(live.redis, level(room, sku, 1, 100))
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(f"GET /v1/rooms/{room}/stock/stream HTTP/1.0\r\nHost: t\r\n\r\n".encode())
    async with live.session.ws_connect(f"{live.url}/v1/rooms/{room}/ws?viewer=v1") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
        assert (await read_event(reader))[0] == "snapshot"  # HTTP/1.0: no chunk framing
        await wait_for(lambda: all(s.direct for s in live.gw.hub.subscriptions(room)))
        for version in (2, 3):
            update = level(room, sku, version, 100 - version)
            await put(live.redis, update)
            assert await ws.receive_json(timeout=5) == {"type": "stock", **update_view(update)}
            assert await read_stock(reader) == update_view(update)
    writer.close()
