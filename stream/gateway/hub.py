"""The gateway's live hub: one Redis pub/sub subscription in, per-client subscriptions out.

Workers publish coalesced `StockUpdate` batches on `keys.STOCK_CHANNEL` (and nudges on
`keys.NUDGE_CHANNEL`). Each gateway process holds one subscription (`LiveHub`, which
carries stock and nudges) and hands every update to the clients of its room through a
`Subscription`: a keep-the-latest dict per SKU, so a slow client costs at most one
pending update per SKU and never holds up the hub or anyone else.

A client registers first and reads the snapshot second, then forwards only versions
above the snapshot's: it misses no change and never goes back in time. Several
workers may publish and messages may cross, so for each (room, sku) only a higher
`version` than already seen counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from prometheus_client import Counter, Gauge

from stream.core.models import StockUpdate
from stream.store import keys
from stream.store.channels import subscriber
from stream.store.connect import Client
from stream.store.stockread import StockReader

log = logging.getLogger(__name__)

Kind = Literal["sse", "ws"]

SUBSCRIBERS = Gauge("lc_stock_subscribers", "Clients connected to live stock", ["kind"])
DELIVERED = Counter("lc_stock_updates_delivered_total", "Stock updates sent to clients",
                    ["kind"])
# Bound once (a label lookup per batch per client adds up); also shows both kinds at 0.
DELIVERED_BY_KIND = {kind: DELIVERED.labels(kind) for kind in ("sse", "ws")}
_SUBSCRIBERS_BY_KIND = {kind: SUBSCRIBERS.labels(kind) for kind in ("sse", "ws")}
RECONNECTS = Counter("lc_stock_hub_reconnects_total",
                     "Times the gateway lost its Redis pub/sub connection")
SNAPSHOTS = Counter("lc_stock_snapshots_total",
                    "Snapshots handed to connecting clients, by where they came from",
                    ["source"])
_SNAPSHOT_FROM = {source: SNAPSHOTS.labels(source) for source in ("cache", "redis")}

_decode_batch = msgspec.json.Decoder(list[StockUpdate])


class Subscription:
    """One client's view of a room: pending updates by SKU, newest version wins.

    `pending` never holds more entries than the room has SKUs, however slow the
    client: a newer update replaces the one waiting for its SKU.
    """

    __slots__ = ("_closed", "_floor", "_pending", "_wake", "alive", "direct", "kind",
                 "on_pending", "room_id")

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
        # For a handler that drains `take()` only while the socket is backed up, rather
        # than waiting in `next_batch`: called when an update starts to wait, and on close.
        self.on_pending: Callable[[], None] | None = None

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
            if self.on_pending is not None:
                self.on_pending()

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
        return [] if self._closed else self.take()

    def take(self) -> list[StockUpdate]:
        """The pending updates, taken now (none if none wait)."""
        batch = list(self._pending.values())
        self._pending.clear()
        for update in batch:
            self._floor[update.sku] = update.version
        return batch

    def close(self) -> None:
        """End the subscription: `next_batch` returns `[]` from now on."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self.on_pending is not None:
            self.on_pending()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._pending)


@dataclass(slots=True)
class _Room:
    """A room's subscribers and its stock as the hub knows it: `latest` is a complete
    snapshot once `primed` (read from Redis once, kept current by every update since)."""

    latest: dict[str, StockUpdate] = field(default_factory=dict)
    subs: set[Subscription] = field(default_factory=set)
    primed: bool = False
    loading: asyncio.Future[None] | None = None


class LiveHub:
    """One Redis pub/sub subscription per gateway process, fanned out to subscriptions.

    Survives Redis restarts: it reconnects with backoff and, after every (re)subscribe,
    re-reads the stock of rooms with subscribers, since messages published while it
    was away are gone.
    """

    def __init__(self, redis: Client, *, keepalive_s: float = 15.0, reap_s: float = 1.0,
                 ping_s: float = 5.0, min_backoff_s: float = 0.2, max_backoff_s: float = 10.0,
                 connect_timeout_s: float = 5.0) -> None:
        self.redis = redis
        self.stock = StockReader(redis)
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
        _SUBSCRIBERS_BY_KIND[kind].inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget `sub` (idempotent); a room without subscribers is dropped."""
        sub.close()
        room = self._rooms.get(sub.room_id)
        if room is None or sub not in room.subs:
            return
        room.subs.discard(sub)
        _SUBSCRIBERS_BY_KIND[sub.kind].dec()
        if not room.subs:
            del self._rooms[sub.room_id]

    async def snapshot(self, sub: Subscription) -> list[StockUpdate]:
        """The room's stock (call after registering!), and prime `sub` with it.

        From the room's cache: a connect storm (5,000 viewers a second arriving when the
        host says "link is up") costs one Redis read per room, not one per viewer. The
        first subscriber's read fills it, concurrent ones wait for that same read.
        """
        room = self._rooms.get(sub.room_id)
        if room is None or sub.closed:  # unsubscribed meanwhile: nothing to keep current
            return sub.prime(await self.stock.levels(sub.room_id))
        if not room.primed:
            if room.loading is None or room.loading.done():
                room.loading = asyncio.ensure_future(self._load(sub.room_id, room))
            await asyncio.shield(room.loading)
        else:
            _SNAPSHOT_FROM["cache"].inc()
        return sub.prime(room.latest.values())

    async def _load(self, room_id: str, room: _Room) -> None:
        _SNAPSHOT_FROM["redis"].inc()
        self.dispatch(await self.stock.levels(room_id))
        room.primed = True

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
        rooms = list(self._rooms.items())
        if not rooms:
            return
        await asyncio.gather(*(self._load(room_id, room) for room_id, room in rooms))

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = subscriber(self.redis, attempt=failures)
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
                # Updates published while we are away are lost: until the resync, a
                # snapshot must come from Redis, not from a cache that may be behind.
                for room in self._rooms.values():
                    room.primed = False
                failures += 1
                RECONNECTS.inc()
                delay = min(self.max_backoff_s, self.min_backoff_s * 2 ** min(failures - 1, 16))
                delay *= random.uniform(0.5, 1.0)  # gateways should not return in lockstep
                log.warning("stock hub: Redis pub/sub lost (%s: %s); retry %d in %.1f s",
                            type(exc).__name__, exc, failures, delay)
                await asyncio.sleep(delay)
            finally:
                # redis-py leaves `PubSub.aclose` unannotated.
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _reap(self) -> None:
        # aiohttp does not cancel a handler whose client left; an idle SSE stream would
        # otherwise stay subscribed until its next keepalive write fails.
        while True:
            await asyncio.sleep(self.reap_s)
            for room in self._rooms.values():
                for sub in room.subs:
                    if sub.alive is not None and not sub.alive():
                        sub.close()
