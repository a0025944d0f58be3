"""Trust at the edges (issue 13) on the real stack: host data behind host/monitor tokens,
room series on /metrics, CORS and the WebSocket's Origin, hostile input, half-open
connections, the subscriber cap, JSON errors with a request id."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import orjson
import pytest
from aiohttp import ClientSession, WSServerHandshakeError, web
from helpers import ev, running_gateway
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.core.models import StockUpdate
from stream.gateway.app import SUBSCRIBERS, Gateway
from stream.gateway.cors import apply_cors
from stream.local.embedded import free_port
from stream.store import keys

pytestmark = pytest.mark.integration

# Every host-data endpoint; later host-view endpoints (broadcasts, …) belong here too.
HOST_DATA_PATHS = ["/v1/rooms/{room}/metrics", "/v1/rooms/{room}/broadcasts"]
# After-show data, narrower than host data: (path, role -> status).
AFTER_SHOW_PATHS = {
    "/v1/rooms/{room}/picklist?by=sku": {"commerce": 200, "host": 200, "monitor": 403,
                                         "platform": 403},
    "/v1/rooms/{room}/picklist?by=leader&format=csv": {"commerce": 200, "host": 200,
                                                       "monitor": 403, "platform": 403},
    "/v1/rooms/{room}/picklist?by=customer": {"commerce": 200, "host": 200, "monitor": 403,
                                              "platform": 403},
    "/v1/rooms/{room}/followups": {"commerce": 200, "host": 200, "monitor": 403,
                                   "platform": 403},
}


def new_room() -> str:
    return f"edge-{uuid.uuid4().hex[:10]}"


def auth(tokens: Tokens, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.for_role(role)}"}  # type: ignore[arg-type]


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[tuple[Gateway, str, Tokens]]:
    async with running_gateway(settings) as running:
        yield running


# --- host data ------------------------------------------------------------------------


@pytest.mark.parametrize("path", HOST_DATA_PATHS)
async def test_host_data_answers_by_role(gateway: tuple[Gateway, str, Tokens],
                                         path: str) -> None:
    _, url, tokens = gateway
    target = url + path.format(room=new_room())
    async with ClientSession() as http:
        for headers, status in [({}, 401), ({"Authorization": "Bearer made-up"}, 401),
                                ({"Authorization": "Basic abc"}, 401),
                                (auth(tokens, "platform"), 403),
                                (auth(tokens, "commerce"), 403),
                                (auth(tokens, "host"), 200), (auth(tokens, "monitor"), 200)]:
            async with http.get(target, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == status, (headers, body)
                if status != 200:
                    assert "host or monitor token" in body["error"], body
                if status == 401:
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", AFTER_SHOW_PATHS)
async def test_after_show_data_answers_by_role(gateway: tuple[Gateway, str, Tokens],
                                               path: str) -> None:
    _, url, tokens = gateway
    target = url + path.format(room=new_room())
    async with ClientSession() as http:
        async with http.get(target) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        for role, status in AFTER_SHOW_PATHS[path].items():
            async with http.get(target, headers=auth(tokens, role)) as resp:
                assert resp.status == status, (role, await resp.text())
                if status == 403:
                    assert role in (await resp.json())["error"]


async def test_a_monitor_token_sends_no_events(gateway: tuple[Gateway, str, Tokens]) -> None:
    _, url, tokens = gateway
    async with ClientSession() as http:
        for event in (ev("viewer.joined", source="douyin"), ev("stock.set", sku="a", qty=1)):
            async with http.post(f"{url}/v1/events", json=[event],
                                 headers=auth(tokens, "monitor")) as resp:
                assert resp.status == 403, await resp.text()
                assert "this one is monitor" in (await resp.json())["error"]


async def test_room_series_on_metrics_need_host_or_monitor(
        gateway: tuple[Gateway, str, Tokens], redis: Redis) -> None:
    _, url, tokens = gateway
    room = new_room()
    # The worker marks a room with an event as recent in this set; so do we, with a count.
    await redis.hset(keys.stats(room), mapping={"orders_reserved": 3})
    await redis.zadd(keys.METRIC_ROOMS, {room: int(time.time() * 1000)})
    series = re.compile(rf'^lc_(room|sku|segment|nudge)\w*{{[^}}]*room="{room}"', re.M)
    async with ClientSession() as http:
        for headers, shown in [({}, False), (auth(tokens, "platform"), False),
                               (auth(tokens, "commerce"), False),
                               ({"Authorization": "Bearer made-up"}, False),
                               (auth(tokens, "monitor"), True), (auth(tokens, "host"), True)]:
            async with http.get(f"{url}/metrics", headers=headers) as resp:
                text = await resp.text()
            assert resp.status == 200
            assert "lc_gateway_events_total" in text  # the process's own, for anyone
            assert "lc_stock_subscribers" in text
            assert bool(series.search(text)) == shown, headers
            if shown:
                assert f'lc_room_orders_total{{room="{room}"}} 3.0' in text
            else:
                assert not re.search(r"^lc_(room|sku|segment|nudge)", text, re.M), headers


# --- CORS and the WebSocket's Origin --------------------------------------------------------


async def test_cors_by_origin_list(settings: Settings) -> None:
    brand = "http://brand.example"
    settings = msgspec.structs.replace(settings, cors_origins=f"{brand}, http://other.example")
    async with running_gateway(settings) as (_, url, tokens), ClientSession() as http:
        room = new_room()
        for path in (f"/v1/rooms/{room}/stock", "/healthz"):
            async with http.get(url + path, headers={"Origin": brand}) as resp:
                got = resp.headers.get("Access-Control-Allow-Origin")
                assert got == (brand if "stock" in path else None), path
        async with http.get(f"{url}/v1/rooms/{room}/stock",
                            headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(f"{url}/v1/rooms/{room}/stock/stream",
                            headers={"Origin": brand}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == brand
            assert resp.headers["Content-Type"] == "text/event-stream"
        preflight = {"Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}
        async with http.options(f"{url}/v1/events",
                                headers={"Origin": brand, **preflight}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == brand
            allowed = resp.headers["Access-Control-Allow-Headers"].lower().split(",")
            assert {"authorization", "content-type"} <= {h.strip() for h in allowed}
        async with http.options(f"{url}/v1/events",
                                headers={"Origin": "http://evil.example", **preflight}) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.post(f"{url}/v1/events", json=[ev("viewer.joined", source="douyin")],
                             headers={"Origin": brand, **auth(tokens, "platform")}) as resp:
            assert resp.status == 202
            assert resp.headers["Access-Control-Allow-Origin"] == brand


async def test_star_opens_only_the_public_stock(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, cors_origins="*")
    anyone = {"Origin": "http://anyone.example"}
    async with running_gateway(settings) as (_, url, tokens), ClientSession() as http:
        async with http.get(f"{url}/v1/rooms/{new_room()}/stock", headers=anyone) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == anyone["Origin"]
        async with http.options(f"{url}/v1/events", headers={
                **anyone, "Access-Control-Request-Method": "POST"}) as resp:
            assert resp.status == 403
        async with http.get(f"{url}/v1/rooms/{new_room()}/metrics",
                            headers={**anyone, **auth(tokens, "monitor")}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(f"{url}/v1/rooms/{new_room()}/ws", headers=anyone)
        assert refused.value.status == 403


async def test_same_origin_only_by_default(gateway: tuple[Gateway, str, Tokens]) -> None:
    _, url, _ = gateway
    async with ClientSession() as http:
        async with http.get(f"{url}/v1/rooms/{new_room()}/stock",
                            headers={"Origin": "http://brand.example"}) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.options(f"{url}/v1/events", headers={
                "Origin": "http://brand.example", "Access-Control-Request-Method": "POST"},
                                ) as resp:
            assert resp.status == 403  # the CORS library's refusal, not a 405
            assert "not allowed" in await resp.text()


async def test_websocket_checks_origin(settings: Settings) -> None:
    brand = "http://brand.example"
    settings = msgspec.structs.replace(settings, cors_origins=brand)
    async with running_gateway(settings) as (_, url, _), ClientSession() as http:
        ws_url = f"{url}/v1/rooms/{new_room()}/ws"
        for origin in (brand, None, url):  # listed; a native app; the gateway's own page
            headers = {} if origin is None else {"Origin": origin}
            async with http.ws_connect(ws_url, headers=headers) as ws:
                first = await ws.receive_json(timeout=10)
                assert first["type"] == "snapshot", origin
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url, headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403


# --- hostile input ---------------------------------------------------------------------


async def test_deep_nesting_is_a_400_naming_the_problem(
        gateway: tuple[Gateway, str, Tokens]) -> None:
    _, url, tokens = gateway
    headers = {**auth(tokens, "platform"), "Content-Type": "application/json"}
    inside = orjson.dumps([ev("viewer.joined", source="douyin")])[:-2] + b',"x":' \
        + b"[" * 50_000 + b"]" * 50_000 + b"}]"
    async with ClientSession() as http:
        for body in (b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000,
                     inside):
            async with http.post(f"{url}/v1/events", data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 400, answer
                assert "nests" in answer["error"] and "too deeply" in answer["error"]


async def test_a_bug_in_a_handler_is_a_json_500_with_the_logged_request_id(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with running_gateway(settings) as (gw, _, _):
        app = gw._runner.app if gw._runner is not None else None
        assert app is not None
        # A handler that fails the way a bug does; routes cannot be added to a running
        # app, so it is served by a second runner on the same app's middlewares.
        boom = web.Application(middlewares=app.middlewares)

        async def broken(request: web.Request) -> web.Response:
            raise KeyError("not a thing")

        boom.router.add_get("/boom", broken)
        runner = web.AppRunner(boom)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            with caplog.at_level(logging.ERROR, logger="stream.gateway.errors"):
                async with ClientSession() as http, http.get(
                        f"http://127.0.0.1:{port}/boom") as resp:
                    assert resp.status == 500
                    assert resp.content_type == "application/json"
                    answer = await resp.json()
            assert answer["error"] == "internal error"
            request_id = answer["request_id"]
            assert resp.headers["X-Request-Id"] == request_id
            logged = [r for r in caplog.records if request_id in r.getMessage()]
            assert logged and logged[0].exc_info is not None
        finally:
            await runner.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader, *, within_s: float) -> bytes:
    """What the server sent before closing the connection (fails if it does not)."""
    got = b""
    async with asyncio.timeout(within_s):
        while chunk := await reader.read(4096):
            got += chunk
    return got


async def test_half_open_connections_are_closed_within_the_read_timeout(
        settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, read_timeout_s=1)
    async with running_gateway(settings) as (_, url, tokens):
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        conns = [await asyncio.open_connection(host, port) for _ in range(50)]
        for i, (_, writer) in enumerate(conns):
            # Half a request header, then nothing: or a header and half a body.
            if i % 2:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                             + tokens.for_role("platform").encode()
                             + b"\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n[{")
            await writer.drain()
        # Closed by the server within the timeout (1 s) plus slack for a loaded machine.
        answers = await asyncio.gather(*(_closed_by_server(r, within_s=15) for r, _ in conns))
        for i, answer in enumerate(answers):
            if i % 2:
                assert answer == b""  # no request ever arrived: just closed
            else:
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b"LIVECOMMERCE_READ_TIMEOUT_S" in answer
        for _, writer in conns:
            writer.close()


async def test_an_idle_keep_alive_connection_outlives_the_read_timeout(
        settings: Settings) -> None:
    """The timeout is for a request under way, not for a kept-alive connection between
    requests: closing those makes a client's next POST race the close."""
    settings = msgspec.structs.replace(settings, read_timeout_s=1)
    async with running_gateway(settings) as (_, url, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(2):
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
                await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.sleep(2.5)  # idle, past the timeout, on the same connection
        writer.close()


async def test_a_subscriber_outlives_the_read_timeout(settings: Settings,
                                                      redis: Redis) -> None:
    settings = msgspec.structs.replace(settings, read_timeout_s=1)
    room = new_room()
    async with running_gateway(settings) as (gw, url, _), ClientSession() as http, \
            http.get(f"{url}/v1/rooms/{room}/stock/stream") as resp:
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: snapshot")
        await asyncio.sleep(2.5)  # well past the timeout: the stream must still be open
        update = StockUpdate(room_id=room, sku="rice", available=5, reserved=0, sold=0,
                             version=1, ts=int(time.time() * 1000))
        await redis.publish(keys.STOCK_CHANNEL, msgspec.json.encode([update]))
        async with asyncio.timeout(10):
            event = await resp.content.readuntil(b"\n\n")
        assert event.startswith(b"event: stock") and b'"available":5' in event
        assert gw.hub.subscribers(room) == 1


async def test_past_the_subscriber_cap_503_and_retry_after(settings: Settings) -> None:
    settings = msgspec.structs.replace(settings, max_subscribers=3)
    room = new_room()
    async with running_gateway(settings) as (gw, url, _), ClientSession() as http:
        cap = gw._runner.app[SUBSCRIBERS] if gw._runner else None
        assert cap is not None and cap.limit == 3
        held = [await http.get(f"{url}/v1/rooms/{room}/stock/stream") for _ in range(2)]
        ws = await http.ws_connect(f"{url}/v1/rooms/{room}/ws")
        assert all(r.status == 200 for r in held)
        assert cap.active == 3
        async with http.get(f"{url}/v1/rooms/{room}/stock/stream") as resp:
            assert resp.status == 503
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
            assert "maximum of 3" in (await resp.json())["error"]
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(f"{url}/v1/rooms/{room}/ws")
        assert refused.value.status == 503
        async with http.get(f"{url}/v1/rooms/{room}/stock") as resp:
            assert resp.status == 200  # not a subscriber: never capped
        await ws.close()
        for _ in range(200):  # the server notices the close, then a place is free
            if cap.active < 3:
                break
            await asyncio.sleep(0.05)
        async with http.get(f"{url}/v1/rooms/{room}/stock/stream") as resp:
            assert resp.status == 200
        for r in held:
            r.close()


async def test_cors_reaches_routes_added_later_under_client(tmp_path: Path) -> None:
    """The browser client's files (another branch adds them) get CORS by their path,
    whether a static directory or one route."""
    (tmp_path / "livecommerce.js").write_text("export function connect() {}")

    async def empty(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_static("/client", tmp_path)
    app.router.add_get("/v1/rooms/{room}/stock", empty)
    app.router.add_get("/v1/private", empty)
    apply_cors(app, origins=("*",))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    anyone = {"Origin": "http://anyone.example"}
    try:
        async with ClientSession() as http:
            for path, opened in [("/client/livecommerce.js", True), ("/v1/rooms/r/stock", True),
                                 ("/v1/private", False)]:
                async with http.get(f"http://127.0.0.1:{port}{path}", headers=anyone) as resp:
                    assert resp.status == 200
                    got = resp.headers.get("Access-Control-Allow-Origin")
                    assert got == (anyone["Origin"] if opened else None), path
    finally:
        await runner.cleanup()
