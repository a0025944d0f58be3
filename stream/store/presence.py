"""The host's view in Redis: who is in the room (a pipeline handler), and reading it back.

Presence is counted per viewer on event time, which makes it idempotent without
offset fences: a viewer's events all come through one partition in order, and a
redelivery replays a suffix of it. A join opens a visit only if it is newer than the
viewer's last leave, a leave closes only an open visit it is not older than, so a
replayed join or leave changes nothing. Each worker updates the room's shared
counters in one script per room and batch; there is no per-worker state to merge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
from redis.asyncio import Redis

from stream.core.batch import Part, newest_by_room
from stream.core.counters import layer, minute_of
from stream.core.models import CartAdded, OrderPaymentFailed, OrderPlaced, ViewerJoined, ViewerLeft
from stream.hostview.metrics import RoomRaw, SkuRow
from stream.store import keys, scripts
from stream.store.clocks import RoomClocks
from stream.store.ledger import read_stats
from stream.store.roomlog import RoomLog

# KEYS: stats, presence, profiles, watched, carted, pay-failed.
# ARGV: a msgpack array of ops, 5 fields each: op ('j' join, 'l' leave, 'c' carted, 'f'
# payment failed), viewer, ts, minute, profile (`source|leader|layer|region`, joins only).
# Presence value: join ts while in the room, -(leave ts) after; `open_join_sum` is the sum
# of the open visits' join times, so open watch time is online * now - open_join_sum.
PRESENCE = """
local stats, presence, profiles, watched = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local online = tonumber(redis.call('HGET', stats, 'online') or '0')
local peak = tonumber(redis.call('HGET', stats, 'peak') or '0')
local ops = cmsgpack.unpack(ARGV[1])
for i = 1, #ops, 5 do
  local op, viewer, ts, minute = ops[i], ops[i + 1], ops[i + 2], ops[i + 3]
  if op == 'j' or op == 'l' then
    local raw = redis.call('HGET', presence, viewer)
    local cur = tonumber(raw or '0')
    if op == 'j' then
      if cur <= 0 and tonumber(ts) > -cur then
        redis.call('HSET', presence, viewer, ts)
        redis.call('HINCRBY', stats, 'open_join_sum', ts)
        online = online + 1
        redis.call('HSET', stats, 'm:' .. minute .. ':online', online)
      end
      if redis.call('HSETNX', profiles, viewer, ops[i + 4]) == 1 then
        local source, _, layer = string.match(ops[i + 4], '([^|]*)|([^|]*)|([^|]*)|')
        redis.call('HINCRBY', stats, 'viewers', 1)
        redis.call('HINCRBY', stats, 'src:' .. source .. ':viewers', 1)
        redis.call('HINCRBY', stats, 'layer:' .. layer .. ':viewers', 1)
      end
    elseif cur > 0 and tonumber(ts) >= cur then
      local ms = tonumber(ts) - cur
      redis.call('HSET', presence, viewer, '-' .. ts)
      redis.call('HINCRBY', stats, 'open_join_sum', '-' .. raw)
      redis.call('HINCRBY', stats, 'watch_ms', ms)
      redis.call('HINCRBY', watched, viewer, ms)
      online = online - 1
      redis.call('HSET', stats, 'm:' .. minute .. ':online', online)
    end
    if online > peak then peak = online end
  elseif op == 'c' then
    redis.call('SADD', KEYS[5], viewer)
  else
    redis.call('SADD', KEYS[6], viewer)
  end
end
redis.call('HSET', stats, 'online', online, 'peak', peak)
return online
"""


def _joined(e: ViewerJoined) -> list[str | int]:
    profile = f"{e.source}|{e.leader_id or ''}|{layer(e.returning)}|{e.region or ''}"
    return ["j", e.viewer_id, e.ts, minute_of(e.ts), profile]


# By exact type: called for every event of a batch, most of which need nothing here.
_OPS: dict[type, Callable[..., list[str | int]]] = {
    ViewerJoined: _joined,
    ViewerLeft: lambda e: ["l", e.viewer_id, e.ts, minute_of(e.ts), ""],
    CartAdded: lambda e: ["c", e.viewer_id, e.ts, 0, ""],
    OrderPlaced: lambda e: ["c", e.viewer_id, e.ts, 0, ""],
    OrderPaymentFailed: lambda e: ["f", e.viewer_id, e.ts, 0, ""],
}


_pack = msgspec.msgpack.Encoder().encode


class Presence:
    """Pipeline handler: joins, leaves, carts and failed payments into the room's keys."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(PRESENCE)

    async def handle(self, parts: Sequence[Part]) -> None:
        by_room: dict[str, list[str | int]] = {}
        latest = newest_by_room(parts)
        for part in parts:
            for e in part.events:
                op = _OPS.get(type(e))
                if op is not None:
                    by_room.setdefault(e.room_id, []).extend(op(e))
        if not latest:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, ops in by_room.items():
                await self._script(keys=room_keys(room), args=[_pack(ops)], client=pipe)
            pipe.zadd(keys.METRIC_ROOMS, latest, gt=True)
            await scripts.execute(pipe)


def room_keys(room: str) -> list[str]:
    return [keys.stats(room), keys.presence(room), keys.profiles(room), keys.watched(room),
            keys.carted(room), keys.pay_failed(room)]


# --- reading ------------------------------------------------------------------------------


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

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._rooms = RoomLog(redis)
        self._clocks = RoomClocks(redis)

    async def raw(self, room_id: str, *, wall_now_ms: int) -> RoomRaw:
        redis = self._redis
        await self._rooms.refresh([room_id])
        skus = sorted(s.decode() for s in await redis.smembers(keys.skus(room_id)))
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.seconds(room_id))
            pipe.hgetall(keys.nudged(room_id))
            pipe.hgetall(keys.buyers(room_id))
            for sku in skus:
                pipe.hmget(keys.stock_prefix(room_id) + sku, "name", "price", "loaded",
                           "available", "reserved", "sold")
            seconds, nudged, buyers, *rows = await pipe.execute()
        stats = await read_stats(redis, room_id)
        now = await self._clocks.now(room_id, wall_now_ms=wall_now_ms)
        return RoomRaw(
            room_id=room_id, now_ms=now if now is not None else wall_now_ms,
            stats={k: float(v) for k, v in stats.items()},
            skus=[SkuRow(sku=sku, name=(r[0] or sku.encode()).decode(),
                         price=float(r[1]) if r[1] else None, loaded=int(r[2] or 0),
                         available=int(r[3] or 0), reserved=int(r[4] or 0),
                         sold=int(r[5] or 0))
                  for sku, r in zip(skus, rows, strict=True)],
            timeline=self._rooms.get(room_id),
            seconds={k.decode(): float(v) for k, v in seconds.items()},
            nudged={k.decode(): v.decode() for k, v in nudged.items()},
            buyers={k.decode(): int(v) for k, v in buyers.items()},
        )

    async def viewers(self, room_id: str, *, end_ms: int) -> list[Viewer]:
        """Every viewer who joined, with what the review groups them by."""
        redis = self._redis
        async with redis.pipeline(transaction=False) as pipe:
            for key in (keys.profiles, keys.presence, keys.watched, keys.buyers, keys.spend):
                pipe.hgetall(key(room_id))
            pipe.smembers(keys.carted(room_id))
            pipe.smembers(keys.pay_failed(room_id))
            profiles, presence, watched, buyers, spend, carted, failed = await pipe.execute()
        # A buyer whose join never came (orders only) still counts, under no source.
        for raw_id in buyers.keys() - profiles.keys():
            profiles[raw_id] = b"(none)||unknown|"
        out = []
        for raw_id, raw_profile in sorted(profiles.items()):
            source, leader, layer_, region = raw_profile.decode().split("|", 3)
            joined = int(presence.get(raw_id, b"0"))
            ms = int(watched.get(raw_id, b"0")) + (max(0, end_ms - joined) if joined > 0 else 0)
            paid = buyers.get(raw_id)
            out.append(Viewer(viewer_id=raw_id.decode(), source=source, leader=leader,
                              layer=layer_, region=region, watched_ms=ms,
                              carted=raw_id in carted, payment_failed=raw_id in failed,
                              paid_at=int(paid) if paid is not None else None,
                              spend=float(spend.get(raw_id, b"0"))))
        return out

    async def recent_rooms(self, *, since_ms: int) -> list[str]:
        """Rooms with an event since `since_ms` (what Prometheus exports)."""
        return [r.decode() for r in await self._redis.zrangebyscore(
            keys.METRIC_ROOMS, since_ms, "+inf")]
