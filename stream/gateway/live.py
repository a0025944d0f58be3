"""Live stock fan-out in the gateway: Redis pub/sub in, SSE and WebSocket out.

Workers publish coalesced `StockUpdate` batches on `keys.STOCK_CHANNEL`. Each gateway
process holds one subscription (`StockHub`) and hands every update to the clients of
its room through a `Subscription`: a keep-the-latest dict per SKU, so a slow client
costs at most one pending update per SKU and never holds up the hub or anyone else.

A client registers first and reads the snapshot second, then forwards only versions
above the snapshot's: it misses no change and never goes back in time. Several
workers may publish and messages may cross, so for each (room, sku) only a higher
`version` than already seen counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import orjson
from aiohttp import WSMsgType, web
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from stream.core.auth import Tokens
from stream.core.codec import encode
from stream.core.models import StockUpdate
from stream.store import keys
from stream.store.inventory import Inventory

log = logging.getLogger(__name__)

Kind = Literal["sse", "ws"]

SUBSCRIBERS = Gauge("lc_stock_subscribers", "Clients connected to live stock", ["kind"])
DELIVERED = Counter("lc_stock_updates_delivered_total", "Stock updates sent to clients",
                    ["kind"])
# Bound once (a label lookup per batch per client adds up); also shows both kinds at 0.
_DELIVERED = {kind: DELIVERED.labels(kind) for kind in ("sse", "ws")}
for _kind in ("sse", "ws"):
    SUBSCRIBERS.labels(_kind)
RECONNECTS = Counter("lc_stock_hub_reconnects_total",
                     "Times the gateway lost its Redis pub/sub connection")

# Same shape as models.Id: room ids go into Redis keys with a `{room}` hash tag.
_ROOM_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,64}\Z")
_decode_batch = msgspec.json.Decoder(list[StockUpdate])
# Capping the kernel send buffer keeps a stalled client's backlog in our keep-latest
# dict (coalesced) instead of in the kernel as a queue of stale frames.
SEND_BUFFER_BYTES = 64 * 1024


class Subscription:
    """One client's view of a room: pending updates by SKU, newest version wins.

    `pending` never holds more entries than the room has SKUs, however slow the
    client: a newer update replaces the one waiting for its SKU.
    """

    __slots__ = ("_closed", "_floor", "_pending", "_wake", "alive", "direct", "kind",
                 "room_id")

    def __init__(self, room_id: str, kind: Kind,
                 alive: Callable[[], bool] | None = None) -> None:
        self.room_id = room_id
        self.kind: Kind = kind
        # Polled by the hub: a client that went away while idle is noticed without a write.
        self.alive = alive
        self._pending: dict[str, StockUpdate] = {}
        self._floor: dict[str, int] = {}  # version delivered (or in the snapshot) per SKU
        self._wake = asyncio.Event()
        self._closed = False
        # Set by the handler once the snapshot is out: writes an update straight to an
        # idle socket from the hub, or says False (backed up) and the update waits here.
        self.direct: Callable[[StockUpdate], bool] | None = None

    def offer(self, update: StockUpdate) -> None:
        """Keep `update` if it is newer than what the client has or is waiting for."""
        if update.version <= self._floor.get(update.sku, -1):
            return
        if self.direct is not None and not self._pending and self.direct(update):
            # Fan-out fast path: no task wakes per client, which is what bounds 10,000
            # subscribers per gateway process.
            self._floor[update.sku] = update.version
            return
        held = self._pending.get(update.sku)
        if held is None or update.version > held.version:
            self._pending[update.sku] = update
            self._wake.set()

    def prime(self, levels: Iterable[StockUpdate]) -> list[StockUpdate]:
        """Merge the snapshot read after registering with what arrived meanwhile.

        Returns the snapshot to send (by SKU); from now on only newer versions pass.
        """
        merged = {u.sku: u for u in levels}
        for sku, update in self._pending.items():
            held = merged.get(sku)
            if held is None or update.version > held.version:
                merged[sku] = update
        self._pending.clear()
        self._floor = {sku: u.version for sku, u in merged.items()}
        return [merged[sku] for sku in sorted(merged)]

    async def next_batch(self) -> list[StockUpdate]:
        """Wait for pending updates and take them all; `[]` only once closed."""
        while not self._pending and not self._closed:
            self._wake.clear()
            await self._wake.wait()
        if self._closed:
            return []
        batch = list(self._pending.values())
        self._pending.clear()
        for update in batch:
            self._floor[update.sku] = update.version
        return batch

    def close(self) -> None:
        """End the subscription: `next_batch` returns `[]` from now on."""
        self._closed = True
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._pending)


@dataclass(slots=True)
class _Room:
    latest: dict[str, StockUpdate] = field(default_factory=dict)
    subs: set[Subscription] = field(default_factory=set)


class StockHub:
    """One Redis pub/sub subscription per gateway process, fanned out to subscriptions.

    Survives Redis restarts: it reconnects with backoff and, after every (re)subscribe,
    re-reads the stock of rooms with subscribers, since messages published while it
    was away are gone.
    """

    def __init__(self, redis: Redis, *, keepalive_s: float = 15.0, reap_s: float = 1.0,
                 ping_s: float = 5.0, min_backoff_s: float = 0.2, max_backoff_s: float = 10.0,
                 connect_timeout_s: float = 5.0) -> None:
        self.redis = redis
        self.inventory = Inventory(redis)
        self.keepalive_s = keepalive_s
        self.reap_s = reap_s
        self.ping_s = ping_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self._rooms: dict[str, _Room] = {}
        self._subscribed = asyncio.Event()
        self._subscribes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # Other per-gateway feeds (nudges) share this connection and its reconnects.
        self._channels: dict[str, Callable[[bytes], None]] = {
            keys.STOCK_CHANNEL: self._on_payload}

    def add_channel(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Also deliver messages of `channel` to `handler` (register before `start`)."""
        self._channels[channel] = handler

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; waits briefly for the first subscribe but never fails on Redis."""
        self._closed = False
        self._tasks = [asyncio.create_task(self._listen(), name="stock-hub-listen"),
                       asyncio.create_task(self._reap(), name="stock-hub-reap")]
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._subscribed.wait()
        except TimeoutError:
            log.warning("stock hub: Redis pub/sub not ready after %.0f s; live stock "
                        "starts when it is", self.connect_timeout_s)

    async def stop(self) -> None:
        """Stop listening and end every subscription, so streaming handlers return."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._subscribed.clear()
        for room in self._rooms.values():
            for sub in room.subs:
                sub.close()

    @property
    def closed(self) -> bool:
        """True once stopped: new subscriptions would never get an update."""
        return self._closed

    @property
    def connected(self) -> bool:
        """True while the pub/sub subscription is up."""
        return self._subscribed.is_set()

    # --- subscriptions --------------------------------------------------------------------

    def subscribe(self, room_id: str, *, kind: Kind = "sse",
                  alive: Callable[[], bool] | None = None) -> Subscription:
        """Register a client; call `snapshot(sub)` next, and `unsubscribe(sub)` at the end."""
        sub = Subscription(room_id, kind, alive)
        if self._closed:
            sub.close()
            return sub
        room = self._rooms.setdefault(room_id, _Room())
        room.subs.add(sub)
        # Whatever the hub knows may be ahead of Redis's reply to a slow snapshot read.
        for update in room.latest.values():
            sub.offer(update)
        SUBSCRIBERS.labels(kind).inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget `sub` (idempotent); a room without subscribers is dropped."""
        sub.close()
        room = self._rooms.get(sub.room_id)
        if room is None or sub not in room.subs:
            return
        room.subs.discard(sub)
        SUBSCRIBERS.labels(sub.kind).dec()
        if not room.subs:
            del self._rooms[sub.room_id]

    async def snapshot(self, sub: Subscription) -> list[StockUpdate]:
        """Read the room's stock from Redis (after registering!) and prime `sub` with it."""
        return sub.prime(await self.inventory.levels(sub.room_id))

    def subscribers(self, room_id: str | None = None) -> int:
        """How many clients are subscribed (to `room_id`, or in all)."""
        if room_id is not None:
            room = self._rooms.get(room_id)
            return 0 if room is None else len(room.subs)
        return sum(len(room.subs) for room in self._rooms.values())

    def subscriptions(self, room_id: str) -> list[Subscription]:
        """The room's subscriptions (for tests and diagnostics)."""
        room = self._rooms.get(room_id)
        return [] if room is None else list(room.subs)

    # --- fan-out ------------------------------------------------------------------------

    def dispatch(self, updates: Iterable[StockUpdate]) -> None:
        """Hand updates to the subscriptions of their rooms. Synchronous on purpose: the
        hub only writes into dicts, so no client can make it wait."""
        for update in updates:
            room = self._rooms.get(update.room_id)
            if room is None:
                continue
            held = room.latest.get(update.sku)
            if held is not None and held.version >= update.version:
                continue  # stale: another worker's message overtaken by a newer one
            room.latest[update.sku] = update
            for sub in room.subs:
                sub.offer(update)

    def _on_payload(self, data: bytes) -> None:
        try:
            updates = _decode_batch.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("stock hub: dropped a malformed message on %s: %s",
                        keys.STOCK_CHANNEL, exc)
            return
        self.dispatch(updates)

    async def _resync(self) -> None:
        """Re-read the stock of every room with subscribers: fills what pub/sub lost."""
        rooms = list(self._rooms)
        if not rooms:
            return
        levels = await asyncio.gather(*(self.inventory.levels(r) for r in rooms))
        for room_levels in levels:
            self.dispatch(room_levels)

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                unanswered = 0
                while True:
                    message = await pubsub.get_message(timeout=self.ping_s)
                    if message is None:
                        # A silently dead TCP connection would otherwise never raise.
                        unanswered += 1
                        if unanswered > 2:
                            raise ConnectionError("Redis did not answer PING on pub/sub")
                        await pubsub.ping()
                        continue
                    unanswered = 0
                    channel = (message.get("channel") or b"").decode()  # None on a pong
                    if message["type"] == "message":
                        self._channels[channel](message["data"])
                    elif message["type"] == "subscribe" and channel == keys.STOCK_CHANNEL:
                        # Also seen when redis-py reconnected by itself and resubscribed.
                        self._subscribes += 1
                        if failures or self._subscribes > 1:
                            log.warning("stock hub: resubscribed to Redis; resyncing %d "
                                        "rooms", len(self._rooms))
                        failures = 0
                        await self._resync()
                        self._subscribed.set()
            except Exception as exc:
                self._subscribed.clear()
                failures += 1
                RECONNECTS.inc()
                delay = min(self.max_backoff_s, self.min_backoff_s * 2 ** min(failures - 1, 16))
                delay *= random.uniform(0.5, 1.0)  # gateways should not return in lockstep
                log.warning("stock hub: Redis pub/sub lost (%s: %s); retry %d in %.1f s",
                            type(exc).__name__, exc, failures, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _reap(self) -> None:
        # aiohttp does not cancel a handler whose client left; an idle SSE stream would
        # otherwise stay subscribed until its next keepalive write fails.
        while True:
            await asyncio.sleep(self.reap_s)
            for room in self._rooms.values():
                for sub in room.subs:
                    if sub.alive is not None and not sub.alive():
                        sub.close()


# --- HTTP ---------------------------------------------------------------------------------

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
    """The whole server-to-client WebSocket frame: FIN + text, unmasked, no compression."""
    payload = _ws_stock(update)
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
    delivered = _DELIVERED[kind]

    def write(update: StockUpdate) -> bool:
        if (transport is None or transport.is_closing() or transport.get_write_buffer_size()
                or closing()):
            return False
        transport.write(frame(update))
        delivered.inc()
        return True

    return write


def _room_id(request: web.Request) -> str:
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

    def __init__(self, hub: StockHub, tokens: Tokens, *,
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
        room_id = _room_id(request)
        try:
            levels = await self.hub.inventory.levels(room_id)
        except RedisError as exc:
            return _unavailable(exc)
        return _json(_snapshot(room_id, levels))

    async def stock_stream(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/rooms/{room}/stock/stream`: a `snapshot` event, then `stock` events."""
        room_id = _room_id(request)
        if self.hub.closed:
            return _json({"error": "gateway is stopping"}, status=503)
        sub = self.hub.subscribe(room_id, kind="sse", alive=_alive(request))
        try:
            try:
                levels = await self.hub.snapshot(sub)
            except RedisError as exc:
                return _unavailable(exc)
            resp = web.StreamResponse(headers={
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
                    _DELIVERED["sse"].inc(len(batch))
            return resp
        finally:
            self.hub.unsubscribe(sub)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/rooms/{room}/ws?viewer=ID[&token=T]`: stock for all; with a valid
        viewer token also that viewer's own feeds (`viewer_feeds`)."""
        room_id = _room_id(request)
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
            ws = web.WebSocketResponse(heartbeat=30.0, compress=False, timeout=2.0)
            await ws.prepare(request)
            _cap_send_buffer(request)
            lock = asyncio.Lock()

            async def send(text: str | bytes) -> None:
                async with lock:  # several feeds share one socket
                    if isinstance(text, bytes):  # pre-encoded (shared by all clients)
                        await ws.send_frame(text, WSMsgType.TEXT)
                    else:
                        await ws.send_str(text)

            try:
                await send(orjson.dumps({"type": "snapshot", **_snapshot(room_id, levels)})
                           .decode())
            except ConnectionResetError:
                return ws
            if not ws.compress:  # our frames are uncompressed (as asked above)
                sub.direct = _direct(request, _ws_stock_frame, "ws",
                                     closing=lambda: ws.closed)
            feeds: list[Awaitable[None]] = [self._stock_feed(sub, send)]
            if token is not None:  # the hook: per-viewer sources (nudges) join the stock feed
                feeds += [feed(room_id, viewer_id, send) for feed in self.viewer_feeds]
            await _serve(ws, feeds)
            return ws
        finally:
            self.hub.unsubscribe(sub)

    async def _stock_feed(self, sub: Subscription, send: Send) -> None:
        while batch := await sub.next_batch():
            for update in batch:
                await send(_ws_stock(update))
            _DELIVERED["ws"].inc(len(batch))


async def _serve(ws: web.WebSocketResponse, feeds: list[Awaitable[None]]) -> None:
    """Run the feeds until the client leaves or a feed ends (the hub stopped)."""

    async def read() -> None:
        # Clients have nothing to say yet; reading is what notices a close.
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break

    tasks = [asyncio.ensure_future(f) for f in [read(), *feeds]]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None \
                    and not isinstance(exc, ConnectionResetError):
                log.warning("websocket feed failed: %r", exc)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ws.close()


def live_routes(hub: StockHub, tokens: Tokens, *,
                viewer_feeds: Sequence[ViewerFeed] = ()) -> list[web.RouteDef]:
    """Routes for `create_app`; `viewer_feeds` is where per-viewer nudges will plug in."""
    return LiveRoutes(hub, tokens, viewer_feeds=viewer_feeds).routes()
