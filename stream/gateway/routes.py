"""The live HTTP routes: the stock snapshot, the SSE stream and the viewer WebSocket.

Each client registers with the `LiveHub` first and reads the snapshot second (see
stream/gateway/hub.py); the routes write pre-encoded frames shared by every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import orjson
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from stream.core.auth import Tokens
from stream.core.codec import encode
from stream.core.models import StockUpdate
from stream.gateway.hub import DELIVERED_BY_KIND, Kind, LiveHub, Subscription

log = logging.getLogger(__name__)

# Same shape as models.Id: room ids go into Redis keys with a `{room}` hash tag.
_ROOM_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,64}\Z")
# Capping the kernel send buffer keeps a stalled client's backlog in our keep-latest
# dict (coalesced) instead of in the kernel as a queue of stale frames.
SEND_BUFFER_BYTES = 64 * 1024


Send = Callable[[str | bytes], Awaitable[None]]
"""Sends one JSON text message (str, or already UTF-8 bytes) to a WebSocket client."""

ViewerFeed = Callable[[str, str, Send], Awaitable[None]]
"""Hook for per-viewer sources on the WebSocket (nudges, later): called as
`feed(room_id, viewer_id, send)` for a viewer whose token checked out, runs until
cancelled and sends each message with `send`."""


def _level(u: StockUpdate) -> dict[str, object]:
    return {"sku": u.sku, "available": u.available, "reserved": u.reserved, "sold": u.sold,
            "version": u.version}


def _snapshot(room_id: str, levels: Sequence[StockUpdate]) -> dict[str, object]:
    return {"room_id": room_id, "skus": [_level(u) for u in levels]}


def _sse(event: bytes, data: bytes) -> bytes:
    # The JSON encoders never emit a newline, so one `data:` line holds the whole payload.
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


# Encoded once per update, not once per client: the hub hands the same StockUpdate to
# every subscriber of the room, so with 10,000 screens the other 9,999 are cache hits.
@functools.lru_cache(maxsize=4096)
def _sse_stock(update: StockUpdate) -> bytes:
    return _sse(b"stock", encode(update))


@functools.lru_cache(maxsize=4096)
def _sse_stock_chunk(update: StockUpdate) -> bytes:
    data = _sse_stock(update)
    return b"%x\r\n%s\r\n" % (len(data), data)  # HTTP/1.1 chunked transfer framing


@functools.lru_cache(maxsize=4096)
def _ws_stock(update: StockUpdate) -> bytes:
    return b'{"type":"stock",' + encode(update)[1:]


@functools.lru_cache(maxsize=4096)
def _ws_stock_frame(update: StockUpdate) -> bytes:
    return _text_frame(_ws_stock(update))


def _text_frame(payload: bytes) -> bytes:
    """The whole server-to-client WebSocket frame: FIN + text, unmasked, no compression."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def _direct(request: web.Request, frame: Callable[[StockUpdate], bytes], kind: Kind, *,
            closing: Callable[[], bool] = lambda: False) -> Callable[[StockUpdate], bool]:
    """Write a pre-encoded frame to the client's transport now, if it is not backed up.

    Bypasses aiohttp's writers on purpose (they are awaitable, one task per client);
    safe because each frame is one complete `transport.write` and aiohttp's own writes
    (keepalives, nudges) are too, so frames never interleave mid-way. `closing` says
    when the protocol forbids more data (a WebSocket that sent its close frame).
    """
    transport = request.transport
    delivered = DELIVERED_BY_KIND[kind]

    def write(update: StockUpdate) -> bool:
        if (transport is None or transport.is_closing() or transport.get_write_buffer_size()
                or closing()):
            return False
        transport.write(frame(update))
        delivered.inc()
        return True

    return write


class _EventStream(web.StreamResponse):
    """An SSE response whose headers leave in one write with the first event (the
    snapshot): in a connect storm each extra segment on loopback wakes the client once
    more, and the two writes cost the gateway 2 of its ~500 us per connect."""

    _send_headers_immediately = False


class _Socket(web.WebSocketResponse):
    """A WebSocket whose 101 headers leave in one write with its first frame (the
    snapshot), for the reason `_EventStream` gives."""

    _send_headers_immediately = False

    async def send_first(self, frame: bytes) -> None:
        """Send `frame` (a whole frame, see `_text_frame`) with the buffered headers.
        WebSocketResponse refuses `write`; the base class's writes the raw bytes
        through the same HTTP writer that holds the headers."""
        await web.StreamResponse.write(self, frame)


def room_id_of(request: web.Request) -> str:
    """The `{room}` of the path, or a 400 naming the field."""
    room_id = request.match_info["room"]
    if not _ROOM_ID.match(room_id):
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": "room: expected 1-64 of A-Z a-z 0-9 . _ : @ -"}).decode(),
            content_type="application/json")
    return room_id


def _alive(request: web.Request) -> Callable[[], bool]:
    def alive() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()
    return alive


def _cap_send_buffer(request: web.Request) -> None:
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def _json(data: object, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _unavailable(exc: Exception) -> web.Response:
    log.warning("stock snapshot failed: %r", exc)
    return _json({"error": f"stock is unavailable ({type(exc).__name__}); retry"}, status=503)


class LiveRoutes:
    """The HTTP side: the stock snapshot, the SSE stream and the viewer WebSocket."""

    def __init__(self, hub: LiveHub, tokens: Tokens, *,
                 viewer_feeds: Sequence[ViewerFeed] = ()) -> None:
        self.hub = hub
        self.tokens = tokens
        self.viewer_feeds = list(viewer_feeds)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/rooms/{room}/stock", self.stock),
                web.get("/v1/rooms/{room}/stock/stream", self.stock_stream),
                web.get("/v1/rooms/{room}/ws", self.websocket)]

    async def stock(self, request: web.Request) -> web.Response:
        """`GET /v1/rooms/{room}/stock`: the room's current stock, straight from Redis."""
        room_id = room_id_of(request)
        try:
            levels = await self.hub.stock.levels(room_id)
        except RedisError as exc:
            return _unavailable(exc)
        return _json(_snapshot(room_id, levels))

    async def stock_stream(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/rooms/{room}/stock/stream`: a `snapshot` event, then `stock` events."""
        room_id = room_id_of(request)
        if self.hub.closed:
            return _json({"error": "gateway is stopping"}, status=503)
        sub = self.hub.subscribe(room_id, kind="sse", alive=_alive(request))
        try:
            try:
                levels = await self.hub.snapshot(sub)
            except RedisError as exc:
                return _unavailable(exc)
            resp = _EventStream(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"})  # nginx would otherwise hold events back
            await resp.prepare(request)
            _cap_send_buffer(request)
            with contextlib.suppress(ConnectionResetError):  # the client left mid-write
                await resp.write(_sse(b"snapshot", orjson.dumps(_snapshot(room_id, levels))))
                chunked = resp.headers.get("Transfer-Encoding") == "chunked"
                sub.direct = _direct(request, _sse_stock_chunk if chunked else _sse_stock, "sse")
                while True:
                    try:
                        async with asyncio.timeout(self.hub.keepalive_s):
                            batch = await sub.next_batch()
                    except TimeoutError:
                        await resp.write(b": keepalive\n\n")
                        continue
                    if not batch:
                        break
                    await resp.write(b"".join(_sse_stock(u) for u in batch))
                    DELIVERED_BY_KIND["sse"].inc(len(batch))
            return resp
        finally:
            self.hub.unsubscribe(sub)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/rooms/{room}/ws?viewer=ID[&token=T]`: stock for all; with a valid
        viewer token also that viewer's own feeds (`viewer_feeds`)."""
        room_id = room_id_of(request)
        viewer_id = request.query.get("viewer", "")
        token = request.query.get("token")
        if token is not None and not (viewer_id and self.tokens.is_viewer(viewer_id, token)):
            return _json({"error": "token is not this viewer's token"}, status=403)
        if self.hub.closed:
            return _json({"error": "gateway is stopping"}, status=503)
        sub = self.hub.subscribe(room_id, kind="ws", alive=_alive(request))
        try:
            try:
                levels = await self.hub.snapshot(sub)
            except RedisError as exc:
                return _unavailable(exc)
            # No permessage-deflate: a zlib context per viewer costs more memory than tiny
            # JSON saves. A short close timeout: a stuck client must not hold up shutdown.
            ws = _Socket(heartbeat=30.0, compress=False, timeout=2.0)
            await ws.prepare(request)
            _cap_send_buffer(request)
            lock = asyncio.Lock()

            async def send(text: str | bytes) -> None:
                async with lock:  # several feeds share one socket
                    if isinstance(text, bytes):  # pre-encoded (shared by all clients)
                        await ws.send_frame(text, WSMsgType.TEXT)
                    else:
                        await ws.send_str(text)

            try:  # with the 101 headers, which wait for it (`_Socket`)
                await ws.send_first(_text_frame(
                    orjson.dumps({"type": "snapshot", **_snapshot(room_id, levels)})))
            except ConnectionResetError:
                return ws
            if not ws.compress:  # our frames are uncompressed (as asked above)
                sub.direct = _direct(request, _ws_stock_frame, "ws",
                                     closing=lambda: ws.closed)
            tasks = _Tasks(ws)
            tasks.drain_stock(sub, send)
            if token is not None:  # the hook: per-viewer sources (nudges) join the stock feed
                for feed in self.viewer_feeds:
                    tasks.run(feed(room_id, viewer_id, send))
            await tasks.serve()
            return ws
        finally:
            self.hub.unsubscribe(sub)


class _Tasks:
    """What runs beside a WebSocket's read loop: the viewer's feeds, each in a task for
    as long as the socket lives, and the stock updates that wait for a backed-up socket,
    in a task only while some wait (idle sockets get them from the hub, see `_direct`).

    A stock-only viewer thus costs no task of its own beyond its handler: in a connect
    storm here the two tasks and the `asyncio.wait` it had before took ~70 us of the
    ~400 us of gateway CPU a connect cost (bench/fanout.py, README).
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[bool] | None = None
        self._done = False

    def run(self, feed: Awaitable[None]) -> None:
        """Run `feed` until the socket ends; the socket ends when the feed does."""
        self._start(feed).add_done_callback(self._feed_ended)

    def drain_stock(self, sub: Subscription, send: Send) -> None:
        """Send `sub`'s waiting updates whenever some wait; end the socket with `sub`."""
        drain: asyncio.Task[None] | None = None

        async def send_waiting() -> None:
            while batch := sub.take():
                for update in batch:
                    await send(_ws_stock(update))
                DELIVERED_BY_KIND["ws"].inc(len(batch))

        def on_pending() -> None:
            nonlocal drain
            if self._done:  # `serve` is stopping the tasks: start none after it
                return
            if sub.closed:  # the hub stopped, or reaped the socket
                self._close()
            elif drain is None or drain.done():
                drain = self._start(send_waiting())
                drain.add_done_callback(self._drain_ended)

        sub.on_pending = on_pending
        if len(sub) or sub.closed:  # waiting since the snapshot, or closed meanwhile
            on_pending()

    async def serve(self) -> None:
        """Read until the client leaves or the socket is closed, then stop the tasks."""
        try:
            # Clients have nothing to say yet; reading is what notices a close.
            async for msg in self.ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._done = True
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await (self.ws.close() if self._closing is None else self._closing)

    def _start(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _close(self) -> None:
        """Close the socket, which ends the read loop in `serve`."""
        if self._closing is None and not self._done:
            self._closing = asyncio.ensure_future(self.ws.close())

    def _feed_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():  # not by `serve`: the hub stopped, or the feed failed
            _log_failure(task)
            self._close()

    def _drain_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and _log_failure(task):
            self._close()


def _log_failure(task: asyncio.Task[None]) -> bool:
    """True if the (done, not cancelled) `task` raised; logged unless the client left."""
    if (exc := task.exception()) is None:
        return False
    if not isinstance(exc, ConnectionResetError):
        log.warning("websocket feed failed: %r", exc)
    return True


def live_routes(hub: LiveHub, tokens: Tokens, *,
                viewer_feeds: Sequence[ViewerFeed] = ()) -> list[web.RouteDef]:
    """Routes for `create_app`; `viewer_feeds` is where per-viewer nudges will plug in."""
    return LiveRoutes(hub, tokens, viewer_feeds=viewer_feeds).routes()
