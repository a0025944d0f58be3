"""Reading a room's host view back from Redis: its counters for the live metrics, and
every viewer for the post-live review (written by stream/store/presence.py)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from stream.engine.state import PRESENCE_TIMEOUT_MS
from stream.engine.timeline import RoomTimeline
from stream.hostview.metrics import RoomRaw, SkuRow
from stream.store import keys
from stream.store.buckets import stock_rows
from stream.store.clocks import RoomClocks
from stream.store.connect import Client
from stream.store.ledger import read_stats
from stream.store.replies import text
from stream.store.roomlog import RoomLog


class UnknownBroadcast(LookupError):
    """A broadcast id the room has no broadcast of."""


class Viewer(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One viewer of the room, for the post-live review."""

    viewer_id: str
    source: str
    leader: str
    layer: str
    region: str
    watched_ms: int  # closed visits, plus the open one up to the end
    carted: bool
    payment_failed: bool
    paid_at: int | None
    spend: float


class RoomReader:
    """Reads a room's counters (and its host log, cached) for metrics and the review."""

    def __init__(self, redis: Client, *, presence_timeout_ms: int = PRESENCE_TIMEOUT_MS) -> None:
        self._redis = redis
        self._timeout_ms = presence_timeout_ms
        self._rooms = RoomLog(redis)
        self._clocks = RoomClocks(redis)

    async def room(self, room_id: str) -> RoomTimeline:
        """The room as its host log says now (its broadcasts, oldest first)."""
        await self._rooms.refresh([room_id])
        return self._rooms.get(room_id)

    async def book(self, room_id: str, broadcast: str | None) -> int:
        """The book of `broadcast` (default: the one on air, or the latest)."""
        room = await self.room(room_id)
        if broadcast is None:
            return room.current_book()
        book = room.book_of(broadcast)
        if book is None:
            raise UnknownBroadcast(f"broadcast: {broadcast!r} is not a broadcast of {room_id}")
        return book

    async def raw(self, room_id: str, *, wall_now_ms: int,
                  broadcast: str | None = None) -> RoomRaw:
        """One broadcast's counters (default: the one on air, or the latest). Stock is the
        room's, not a broadcast's: the SKU rows are what the room holds now."""
        redis = self._redis
        book = await self.book(room_id, broadcast)
        skus = sorted(text(s) for s in await redis.smembers(keys.skus(room_id)))
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.seconds(room_id, book))
            pipe.hgetall(keys.nudged(room_id, book))
            pipe.hgetall(keys.buyers(room_id, book))
            seconds, nudged, buyers = await pipe.execute()
        rows = await stock_rows(redis, room_id, skus,
                                ("name", "price", "loaded", "available", "reserved", "sold"))
        stats = await read_stats(redis, room_id, book)
        clock = await self._clocks.now(room_id, wall_now_ms=wall_now_ms)
        now = clock if clock is not None else wall_now_ms
        timeline = self._rooms.timeline_of(room_id, book)
        # The presence script closes timed-out visits when the room's events move its
        # clock; a room gone quiet (or ended) still shows them gone: one ZCOUNT.
        upto = now if timeline.ended_at is None else min(now, timeline.ended_at)
        async with redis.pipeline(transaction=False) as pipe:
            for partition in _partitions(stats):
                pipe.zcount(keys.last_seen(room_id, book, partition), "-inf",
                            upto - self._timeout_ms)
            stale = sum(await pipe.execute())
        if stale:
            stats["online"] = int(stats.get("online", 0)) - stale
        return RoomRaw(
            room_id=room_id, now_ms=now,
            stats={k: float(v) for k, v in stats.items()},
            skus=[SkuRow(sku=sku, name=(r[0] or sku.encode()).decode(),
                         price=float(r[1]) if r[1] else None, loaded=int(r[2] or 0),
                         available=int(r[3] or 0), reserved=int(r[4] or 0),
                         sold=int(r[5] or 0))
                  for sku, r in zip(skus, rows, strict=True)],
            timeline=timeline,
            seconds={k.decode(): float(v) for k, v in seconds.items()},
            nudged={k.decode(): v.decode() for k, v in nudged.items()},
            buyers={k.decode(): int(v) for k, v in buyers.items()},
        )

    async def viewers(self, room_id: str, *, end_ms: int,
                      broadcast: str | None = None) -> list[Viewer]:
        """Every viewer who joined the broadcast, with what the review groups them by."""
        redis = self._redis
        book = await self.book(room_id, broadcast)
        async with redis.pipeline(transaction=False) as pipe:
            for key in (keys.profiles, keys.presence, keys.watched, keys.buyers, keys.spend):
                pipe.hgetall(key(room_id, book))
            pipe.smembers(keys.carted(room_id, book))
            pipe.smembers(keys.pay_failed(room_id, book))
            pipe.hgetall(keys.stats(room_id, book))
            (profiles, presence, watched, buyers, spend, carted, failed,
             stats) = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for partition in _partitions({k.decode(): v for k, v in stats.items()}):
                pipe.zrange(keys.last_seen(room_id, book, partition), 0, -1, withscores=True)
            last = {v: int(ts) for scores in await pipe.execute() for v, ts in scores}
        # A buyer whose join never came (orders only) still counts, under no source.
        for raw_id in buyers.keys() - profiles.keys():
            profiles[raw_id] = b"(none)||unknown|"
        out = []
        for raw_id, raw_profile in sorted(profiles.items()):
            source, leader, layer_, region = raw_profile.decode().split("|", 3)
            ms = int(watched.get(raw_id, b"0")) + self._open_ms(
                presence.get(raw_id, b"-0"), last.get(raw_id), end_ms)
            paid = buyers.get(raw_id)
            out.append(Viewer(viewer_id=raw_id.decode(), source=source, leader=leader,
                              layer=layer_, region=region, watched_ms=ms,
                              carted=raw_id in carted, payment_failed=raw_id in failed,
                              paid_at=int(paid) if paid is not None else None,
                              spend=float(spend.get(raw_id, b"0"))))
        return out

    def _open_ms(self, state: bytes, last: int | None, end_ms: int) -> int:
        """The open visit's watch time up to `end_ms`; up to its last event if the timeout
        passed by then (closed visits are in `watched` already)."""
        if state[:1] in (b"-", b"~") or last is None:
            return 0
        joined = int(state)
        until = end_ms if end_ms - last < self._timeout_ms else last
        return max(0, until - joined)

    async def recent_rooms(self, *, since_ms: int) -> list[str]:
        """Rooms with an event since `since_ms` (what Prometheus exports)."""
        return [text(r) for r in await self._redis.zrangebyscore(
            keys.METRIC_ROOMS, since_ms, "+inf")]


def _partitions(stats: Mapping[str, object]) -> list[int]:
    """The input partitions presence has seen the room's viewers on (its clocks)."""
    return [int(k.rsplit(":", 1)[1]) for k in stats if k.startswith("presence_clock:")]
