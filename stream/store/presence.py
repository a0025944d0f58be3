"""The host's view in Redis: who is in the room, as a pipeline handler (its reader is
stream/hostview/reader.py).

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

from stream.core.batch import Part, newest_by_room
from stream.core.counters import layer, minute_of
from stream.core.models import CartAdded, OrderPaymentFailed, OrderPlaced, ViewerJoined, ViewerLeft
from stream.store import keys, scripts
from stream.store.connect import Client

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

    def __init__(self, redis: Client) -> None:
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
                await scripts.call(
                    self._script, keys=room_keys(room), args=[_pack(ops)], client=pipe)
            pipe.zadd(keys.METRIC_ROOMS, latest, gt=True)
            await scripts.execute(pipe)


def room_keys(room: str) -> list[str]:
    return [keys.stats(room), keys.presence(room), keys.profiles(room), keys.watched(room),
            keys.carted(room), keys.pay_failed(room)]
