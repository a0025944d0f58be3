"""Nudges held for a viewer's screen, and the ids already shown: each nudge once, late or not.

Pub/sub keeps nothing, and mobile sockets drop all the time (a subway, an app in the
background). So the worker that fires a nudge also *holds* it in Redis, next to
publishing it, and whichever gateway puts it on one of the viewer's screens first marks
its id *shown* in the same script that drops the held copy: a second tab, a second
gateway, a reconnect, a restarted gateway or a republished nudge (the worker's delivery
is at-least-once) all find the id shown and send nothing. A held nudge older than the
hold time is dropped and counted once as `suppressed:<rule>:expired` in the room's stats
(the same hash and field shape as the engine's other suppression reasons).

All keys of a room carry its `{room}` hash tag, so each script touches one slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis.asyncio.cluster import RedisCluster

from stream.core.codec import encode
from stream.core.models import Nudge
from stream.store import keys, scripts
from stream.store.connect import AnyPipeline, Client

# How long a viewer's shown ids are remembered: longer than a broadcast (caps are per
# broadcast, and the longest shows in the seeds run ~6 h), so a nudge republished hours
# later is still recognised.
SHOWN_TTL_S = 24 * 3600
# Held keys outlive the hold by this much, so a room nobody swept (no gateway up) is
# still counted when one comes back, yet nothing stays in Redis for ever.
HELD_SLACK_S = 3600
# Held nudges expired per script call: bounded so one call never stalls Redis.
SWEEP_LIMIT = 500

# Counted per rule as `suppressed:<rule>:expired`, the field the engine's suppression
# reasons use, so the dashboard and the review list it beside the others.
EXPIRED_PREFIX, EXPIRED_SUFFIX = "suppressed:", ":expired"


def expired_field(rule_id: str) -> str:
    """The room stats field counting `rule_id`'s nudges that expired while held."""
    return f"{EXPIRED_PREFIX}{rule_id}{EXPIRED_SUFFIX}"

# KEYS: held (viewer), shown (viewer), due (room), stats (room)
# ARGV: nudge id, due member, now ms, hold ms, shown ttl s, expired field
# Returns 1: send it (now marked shown), 0: shown before, -1: too old (counted expired).
CLAIM = """
local held, shown, due, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, member = ARGV[1], ARGV[2]
local now, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
local entry = redis.call('HGET', held, id)
redis.call('HDEL', held, id)
redis.call('ZREM', due, member)
if redis.call('SISMEMBER', shown, id) == 1 then return 0 end
if entry then
  local at = tonumber(string.sub(entry, 1, string.find(entry, '|', 1, true) - 1))
  if now - at > hold then
    redis.call('HINCRBY', stats, ARGV[6], 1)
    return -1
  end
end
redis.call('SADD', shown, id)
redis.call('EXPIRE', shown, ARGV[5])
return 1
"""

# KEYS: held (viewer), shown (viewer), due (room), stats (room)
# ARGV: viewer, now ms, hold ms, shown ttl s, expired field prefix, suffix (the rule
#       between: a nudge id is `rule|ts`)
# Returns the JSON of every held nudge to send now (each now marked shown), oldest first.
DRAIN = """
local held, shown, due, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local viewer, now, hold = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local all = redis.call('HGETALL', held)
local out = {}
for i = 1, #all, 2 do
  local id, entry = all[i], all[i + 1]
  local sep = string.find(entry, '|', 1, true)
  local at = tonumber(string.sub(entry, 1, sep - 1))
  redis.call('HDEL', held, id)
  redis.call('ZREM', due, viewer .. ' ' .. id)
  if redis.call('SISMEMBER', shown, id) == 0 then
    if now - at > hold then
      redis.call('HINCRBY', stats, ARGV[5] .. string.match(id, '^(.*)|') .. ARGV[6], 1)
    else
      redis.call('SADD', shown, id)
      out[#out + 1] = {at, string.sub(entry, sep + 1)}
    end
  end
end
if #out > 0 then redis.call('EXPIRE', shown, ARGV[4]) end
table.sort(out, function(a, b) return a[1] < b[1] end)
local texts = {}
for i, pair in ipairs(out) do texts[i] = pair[2] end
return texts
"""

# KEYS: due (room), stats (room)
# ARGV: held key prefix, shown key prefix, cutoff ms (held before it: expired), limit,
#       expired field prefix, suffix
# Returns how many held nudges it counted as expired.
SWEEP = """
local due, stats = KEYS[1], KEYS[2]
local held, shown = ARGV[1], ARGV[2]
local old = redis.call('ZRANGEBYSCORE', due, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local expired = 0
for _, member in ipairs(old) do
  local sep = string.find(member, ' ', 1, true)
  local viewer, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  if redis.call('HDEL', held .. viewer, id) == 1
      and redis.call('SISMEMBER', shown .. viewer, id) == 0 then
    expired = expired + 1
    redis.call('HINCRBY', stats, ARGV[5] .. string.match(id, '^(.*)|') .. ARGV[6], 1)
  end
  redis.call('ZREM', due, member)
end
return expired
"""


def nudge_id(nudge: Nudge) -> str:
    """The nudge's identity for its viewer: a rule fires at an event time decided by the
    engine, so a replay or a republish builds the same id."""
    return f"{nudge.rule_id}|{nudge.ts}"


# KEYS: due (room).  ARGV: held key prefix (the viewer follows), ttl s, now ms, then a
# msgpack array of [viewer, nudge id, nudge JSON as text]. Idempotent: a nudge held again
# keeps its first time (HSETNX, ZADD NX), and one already shown is dropped by whoever
# reads it next. One call per room and round: as five plain commands a nudge, holding a
# round's nudges was 29% of delivery's samples in bench/delivery.py, for 1% of its effects.
HOLD = """
local due, prefix, ttl, now = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
for _, n in ipairs(cmsgpack.unpack(ARGV[4])) do
  local held = prefix .. n[1]
  redis.call('HSETNX', held, n[2], now .. '|' .. n[3])
  redis.call('EXPIRE', held, ttl)
  redis.call('ZADD', due, 'NX', now, n[1] .. ' ' .. n[2])
end
redis.call('EXPIRE', due, ttl)
return 1
"""
_pack = msgspec.msgpack.Encoder().encode


class Holder:
    """The worker's side: hold nudges for their viewers' screens before publishing them."""

    def __init__(self, redis: Client) -> None:
        self._hold = redis.register_script(HOLD)

    async def hold(self, pipe: AnyPipeline, nudges: Sequence[Nudge], *, now_ms: int,
                   hold_s: int) -> None:
        """Queue on `pipe` what holds `nudges`: a script call per room (in calls of at
        most SCRIPT_ITEMS), and the rooms' entries in the gateways' sweep list."""
        by_room: dict[str, list[tuple[str, str, str]]] = {}
        for nudge in nudges:
            by_room.setdefault(nudge.room_id, []).append(
                (nudge.viewer_id, nudge_id(nudge), encode(nudge).decode()))
        for room, held in by_room.items():
            for i in range(0, len(held), scripts.SCRIPT_ITEMS):
                await scripts.call(self._hold, keys=[keys.held_due(room)],
                                   args=[keys.held_nudges(room, ""), hold_s + HELD_SLACK_S,
                                         now_ms, _pack(held[i:i + scripts.SCRIPT_ITEMS])],
                                   client=pipe)
        if by_room:
            pipe.zadd(keys.HELD_ROOMS, dict.fromkeys(by_room, now_ms), gt=True)


class NudgeBox:
    """The gateway's side: claim a nudge for a screen, drain a viewer's held ones, expire."""

    def __init__(self, redis: Client, *, hold_s: int) -> None:
        self.redis = redis
        self.hold_ms = hold_s * 1000
        self._claim = redis.register_script(CLAIM)
        self._drain = redis.register_script(DRAIN)
        self._sweep = redis.register_script(SWEEP)
        self._holder = Holder(redis)

    def _keys(self, room_id: str, viewer_id: str) -> list[str]:
        return [keys.held_nudges(room_id, viewer_id), keys.shown_nudges(room_id, viewer_id),
                keys.held_due(room_id), keys.stats(room_id)]

    async def claim(self, nudge: Nudge, *, now_ms: int) -> int:
        """1: put it on a screen now (it is marked shown); 0: shown before; -1: expired."""
        nid = nudge_id(nudge)
        answer = await scripts.call(
            self._claim, keys=self._keys(nudge.room_id, nudge.viewer_id),
            args=[nid, f"{nudge.viewer_id} {nid}", now_ms, self.hold_ms, SHOWN_TTL_S,
                  expired_field(nudge.rule_id)])
        return int(answer)

    async def release(self, nudge: Nudge, *, held_at_ms: int) -> None:
        """Undo a claim whose socket closed before the nudge was sent: held again, from
        `held_at_ms` (the claim), for the viewer's next socket."""
        # One transaction on a single node. On a Redis Cluster the room list (HELD_ROOMS)
        # is in another slot, so no MULTI can hold both: a plain pipeline, whose only
        # failure is a node dying between the two writes, which drops this one nudge.
        atomic = not isinstance(self.redis, RedisCluster)
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=atomic) as pipe:
                pipe.srem(keys.shown_nudges(nudge.room_id, nudge.viewer_id), nudge_id(nudge))
                await self._holder.hold(pipe, [nudge], now_ms=held_at_ms,
                                        hold_s=self.hold_ms // 1000)
                try:
                    await scripts.execute(pipe)
                    return
                except scripts.ScriptsLost:
                    if attempt == 2:  # Redis restarted: the script loads on the retry
                        raise

    async def drain(self, room_id: str, viewer_id: str, *, now_ms: int) -> list[bytes]:
        """The viewer's held nudges still within the hold (JSON, oldest first), each now
        marked shown; older ones are dropped and counted as expired."""
        answer = await scripts.call(self._drain, keys=self._keys(room_id, viewer_id),
                                    args=[viewer_id, now_ms, self.hold_ms, SHOWN_TTL_S,
                                          EXPIRED_PREFIX, EXPIRED_SUFFIX])
        return list(answer)

    async def sweep(self, *, now_ms: int) -> int:
        """Expire what was held longer than the hold, in every room that held a nudge
        lately; returns how many were counted. Safe to run in every gateway at once."""
        cutoff = now_ms - self.hold_ms
        forget = cutoff - HELD_SLACK_S * 1000
        await self.redis.zremrangebyscore(keys.HELD_ROOMS, "-inf", forget)
        rooms = [r.decode() if isinstance(r, bytes) else str(r)
                 for r in await self.redis.zrangebyscore(keys.HELD_ROOMS, forget, "+inf")]
        expired = 0
        for room in rooms:
            expired += int(await scripts.call(
                self._sweep, keys=[keys.held_due(room), keys.stats(room)],
                args=[keys.held_prefix(room), keys.shown_prefix(room), cutoff, SWEEP_LIMIT,
                      EXPIRED_PREFIX, EXPIRED_SUFFIX]))
        return expired
