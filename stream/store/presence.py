"""The host's view in Redis: who is in the room, as a pipeline handler (its reader is
stream/hostview/reader.py).

Presence is counted per viewer on event time, which makes it idempotent without
offset fences: a viewer's events all come through one partition in order, and a
redelivery replays a suffix of it, so an event no newer than what the viewer's entry
already knows changes nothing. Each worker updates the room's shared counters in one
script per room and batch; there is no per-worker state to merge.

A viewer is online while their last event of any type from the app (join, heartbeat,
view, like, cart...; not orders, which come from the commerce backend and may be paid
elsewhere) is younger than the presence timeout of room event time. Past it the visit
counts as ended at that last event (its watch time ends there); a later event opens a
new visit, not a new viewer. Each open visit's last event is the score of a sorted set
per input partition (a viewer's events all come through one), so the script closes
what is due as that partition's clock for the room (its newest app event seen here)
advances: amortised O(1) per event, no scan of every viewer. Per partition, because a
replay reads partitions minutes of show apart: the room's newest time would close the
visits of a lagging partition only for their next events to reopen them (a first
version did, and the viewer benchmark fell to a third). A close stays provisional: an
event of that viewer younger than the timeout reopens the same visit as if it never
closed, so the counts depend on each viewer's own events only.
Orders do not move the clock: they prove no presence, and the order topic (a partition
number shared with the viewer topic) may be read minutes of show ahead; when they did,
each order batch of a replay closed the partition's open visits for their next proofs
to reopen them. The script keeps the partition's last-seen set in a Lua table while it
runs (one ZMSCORE, one ZADD, one ZREM), not a ZSCORE and a ZADD per proof. The two
together took the presence script from 6.9 s to 1.1 s of valkey CPU for the viewer
benchmark's show (380k events of 20,000 viewers). A partition with no more
events of the room closes nothing; the reader still shows its timed-out viewers gone.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from stream.core.batch import BookOf, Part, Write, by_book, newest_by_room
from stream.core.counters import layer
from stream.core.models import (
    EVENT_TYPES,
    CartAdded,
    Event,
    OrderEvent,
    OrderPaymentFailed,
    OrderPlaced,
    ViewerEvent,
    ViewerJoined,
    ViewerLeft,
)
from stream.engine.state import PRESENCE_TIMEOUT_MS
from stream.store import keys, scripts
from stream.store.connect import Client
from stream.store.roomlog import RoomLog

# KEYS: stats, presence, profiles, watched, carted, pay-failed, last-seen.
# ARGV: a msgpack array of ops, 4 fields each: op ('j' join, 'l' leave, 'p' proof of
# presence, 'c' carted, 'f' payment failed), viewer, ts, profile (joins only:
# `source|leader|layer|region`); then the timeout in ms, then the input partition whose
# viewers these are (its last-seen set is KEYS[7], its clock `presence_clock:<p>`).
# Presence value: join ts while in the room; '-' .. leave ts after a leave; '~' .. join
# ts .. ':' .. last event ts after a timeout. `open_join_sum` is the sum of the open
# visits' join times, so open watch time is online * now - open_join_sum.
# `m:<minute>:online_d` is +1 in the minute a visit opens and -1 in the one it ends (its
# leave, or its last event): the event-time series of online viewers, whatever the order.
PRESENCE = """
local stats, presence, profiles, watched, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[7]
local online = tonumber(redis.call('HGET', stats, 'online') or '0')
local peak = tonumber(redis.call('HGET', stats, 'peak') or '0')
local clock_field = 'presence_clock:' .. ARGV[3]
local clock = tonumber(redis.call('HGET', stats, clock_field) or '0')
local ops = cmsgpack.unpack(ARGV[1])
local timeout = tonumber(ARGV[2])

-- The last-seen set as a table for the length of the script: read in one ZMSCORE per
-- CHUNK viewers, written in one ZADD and one ZREM at the end, instead of a ZSCORE and a
-- ZADD per proof (about 9 of 10 ops are proofs that only move a visit's last event on).
-- `last[v]` is the score, or false when not in the set; `dirty` what to write back.
local CHUNK = 1000  -- well under Lua's 8000 unpack() limit
local last, dirty = {}, {}
local function prefetch(viewers)
  for s = 1, #viewers, CHUNK do
    local part = {}
    for k = s, math.min(s + CHUNK - 1, #viewers) do part[#part + 1] = viewers[k] end
    local scores = redis.call('ZMSCORE', seen, unpack(part))
    for k = 1, #part do last[part[k]] = scores[k] and tonumber(scores[k]) or false end
  end
end
local function seen_score(viewer)
  local v = last[viewer]
  if v == nil then
    local raw = redis.call('ZSCORE', seen, viewer)
    v = raw and tonumber(raw) or false
    last[viewer] = v
  end
  return v
end
local function seen_set(viewer, ts) last[viewer] = ts; dirty[viewer] = true end
local function seen_drop(viewer) last[viewer] = false; dirty[viewer] = true end
local function flush()
  local adds, drops = {}, {}
  for viewer in pairs(dirty) do
    local v = last[viewer]
    if v then adds[#adds + 1] = v; adds[#adds + 1] = viewer
    else drops[#drops + 1] = viewer end
  end
  for s = 1, #adds, 2 * CHUNK do
    redis.call('ZADD', seen, unpack(adds, s, math.min(s + 2 * CHUNK - 1, #adds)))
  end
  for s = 1, #drops, CHUNK do
    redis.call('ZREM', seen, unpack(drops, s, math.min(s + CHUNK - 1, #drops)))
  end
  dirty = {}
end

local function bump(ts, delta)
  redis.call('HINCRBY', stats, 'm:' .. math.floor(ts / 60000) .. ':online_d', delta)
end
local function open(viewer, ts)
  redis.call('HSET', presence, viewer, ts)
  seen_set(viewer, ts)
  redis.call('HINCRBY', stats, 'open_join_sum', ts)
  online = online + 1
  if online > peak then peak = online end
  bump(ts, 1)
end
local function close(viewer, j, e, mark)
  redis.call('HSET', presence, viewer, mark)
  seen_drop(viewer)
  redis.call('HINCRBY', stats, 'open_join_sum', -j)
  redis.call('HINCRBY', stats, 'watch_ms', e - j)
  redis.call('HINCRBY', watched, viewer, e - j)
  online = online - 1
  bump(e, -1)
end
local function lapse(viewer, j, l)
  close(viewer, j, l, '~' .. j .. ':' .. l)
end
local function reopen(viewer, j, l)
  redis.call('HSET', presence, viewer, j)
  seen_set(viewer, l)
  redis.call('HINCRBY', stats, 'open_join_sum', j)
  redis.call('HINCRBY', stats, 'watch_ms', j - l)
  redis.call('HINCRBY', watched, viewer, j - l)
  online = online + 1
  if online > peak then peak = online end
  bump(l, 1)
end
-- The viewer's entry as (state, join, last): 'o' open, 'x' lapsed, 'g' gone (left), nil.
-- An open visit's join is read only when needed (`joined`): most ops are proofs that
-- just move the last event on, in the table above.
local function state(viewer)
  local l = seen_score(viewer)
  if l then return 'o', nil, l end
  local raw = redis.call('HGET', presence, viewer)
  if not raw then return nil end
  if string.sub(raw, 1, 1) == '-' then return 'g', 0, tonumber(string.sub(raw, 2)) end
  local j, l = string.match(raw, '~(%d+):(%d+)')
  if j then return 'x', tonumber(j), tonumber(l) end
  -- Open in another partition's set: the viewer's events came through two partitions (a
  -- producer keying other than by viewer). The visit goes on here from its join.
  return 'o', tonumber(raw), tonumber(raw)
end
local function joined(viewer, j)
  return j or tonumber(redis.call('HGET', presence, viewer))
end

local wanted, listed = {}, {}
for i = 1, #ops, 4 do
  local op, viewer = ops[i], ops[i + 1]
  if (op == 'j' or op == 'l' or op == 'p') and not listed[viewer] then
    listed[viewer] = true
    wanted[#wanted + 1] = viewer
  end
end
prefetch(wanted)

for i = 1, #ops, 4 do
  local op, viewer, ts = ops[i], ops[i + 1], tonumber(ops[i + 2])
  if op == 'j' or op == 'l' or op == 'p' then
    if ts > clock then clock = ts end
    local st, j, l = state(viewer)
    if st ~= nil and ts > l then
      -- Lapsed by the clock yet younger than the timeout: the same visit goes on.
      if st == 'x' and ts - l < timeout then reopen(viewer, j, l); st = 'o' end
      if st == 'o' and ts - l >= timeout then lapse(viewer, joined(viewer, j), l); st = 'x' end
      if op == 'l' then
        if st == 'o' then j = joined(viewer, j); close(viewer, j, ts, '-' .. ts)
        else redis.call('HSET', presence, viewer, '-' .. ts) end
      elseif st == 'o' then
        seen_set(viewer, ts)
      else
        open(viewer, ts)
      end
    elseif st == nil and op == 'j' then
      open(viewer, ts)
    end
    if op == 'j' and redis.call('HSETNX', profiles, viewer, ops[i + 3]) == 1 then
      local source, _, layer = string.match(ops[i + 3], '([^|]*)|([^|]*)|([^|]*)|')
      redis.call('HINCRBY', stats, 'viewers', 1)
      redis.call('HINCRBY', stats, 'src:' .. source .. ':viewers', 1)
      redis.call('HINCRBY', stats, 'layer:' .. layer .. ':viewers', 1)
    end
  elseif op == 'c' then
    redis.call('SADD', KEYS[5], viewer)
  else
    redis.call('SADD', KEYS[6], viewer)
  end
end
flush()
-- Every open visit whose last event the partition's clock has left a timeout behind.
local due = redis.call('ZRANGEBYSCORE', seen, '-inf', clock - timeout, 'WITHSCORES')
for k = 1, #due, 2 do
  local viewer = due[k]
  local raw = redis.call('HGET', presence, viewer)
  local j = raw and string.match(raw, '^%d+$') and tonumber(raw)
  if j then lapse(viewer, j, tonumber(due[k + 1]))
  else seen_drop(viewer) end  -- closed through another partition's set
end
flush()
redis.call('HSET', stats, 'online', online, 'peak', peak, clock_field, clock)
return online
"""


# The app's events prove presence; orders come from the commerce backend (maybe paid
# elsewhere): a placed order marks a cart, a failed payment the payment, nothing more.
PROOFS: frozenset[type[Event]] = frozenset(
    cls for cls in EVENT_TYPES.values() if issubclass(cls, ViewerEvent) and cls.role == "platform")
HANDLED: frozenset[type[Event]] = PROOFS | {OrderPlaced, OrderPaymentFailed}
# The op an order writes, looked up by its exact type: `isinstance` against a union was
# 0.6 us an event, a third of `_add`'s own time in a py-spy profile of the viewer path.
_ORDER_OPS: dict[type[Event], str] = {OrderPlaced: "c", OrderPaymentFailed: "f"}


def _profile(e: ViewerJoined) -> str:
    return f"{e.source}|{e.leader_id or ''}|{layer(e.returning)}|{e.region or ''}"


_pack = msgspec.msgpack.Encoder().encode


class Presence:
    """Pipeline handler behind the batch (`prepare`): visits, carts and failed payments
    into the room's keys."""

    def __init__(self, redis: Client, *, timeout_ms: int = PRESENCE_TIMEOUT_MS,
                 rooms: RoomLog | None = None) -> None:
        self._redis = redis
        self._script = redis.register_script(PRESENCE)
        self._timeout_ms = timeout_ms
        self._rooms = rooms  # each broadcast on its own books; without, all in book 0

    def ops(self, parts: Sequence[Part]) -> dict[tuple[str, int, int], list[str | int]]:
        """The script's ops per room, in event order per viewer. Of a run of one viewer's
        proofs only those that bound a gap of the timeout or more matter: the one before
        the run's last is dropped while the run stays shorter than the timeout (a heartbeat
        every 30 s plus views and likes would be ~5 ops a viewer a minute, ~1 this way)."""
        timeout = self._timeout_ms
        book_of = self._rooms.book_at if self._rooms is not None else None
        by_room: dict[tuple[str, int, int], list[str | int]] = {}  # (room, book, partition)
        # (room, book, partition, viewer) -> index in its ops of the viewer's last two proofs
        runs: dict[tuple[str, int, int, str], tuple[int, int]] = {}
        for part in parts:
            p = part.record.partition
            if len(part.rooms) == 1:  # the usual envelope: books looked up per piece
                for book, events in by_book(part.events, next(iter(part.rooms)), book_of):
                    self._add(events, book, p, book_of, timeout, by_room, runs)
            else:
                self._add(part.events, None, p, book_of, timeout, by_room, runs)
        return by_room

    @staticmethod
    def _add(events: Sequence[Event], book: int | None, partition: int, book_of: BookOf | None,
             timeout: int, by_room: dict[tuple[str, int, int], list[str | int]],
             runs: dict[tuple[str, int, int, str], tuple[int, int]]) -> None:
        for e in events:
            b = book if book is not None else (book_of(e.room_id, e.ts) if book_of else 0)
            cls = type(e)
            order_op = _ORDER_OPS.get(cls)
            if order_op is not None and isinstance(e, OrderEvent):
                by_room.setdefault((e.room_id, b, partition), []).extend(
                    [order_op, e.viewer_id, e.ts, ""])
                continue
            if cls not in PROOFS or not isinstance(e, ViewerEvent):
                continue
            ops = by_room.get((e.room_id, b, partition))
            if ops is None:
                ops = by_room[e.room_id, b, partition] = []
            key = (e.room_id, b, partition, e.viewer_id)
            if cls is CartAdded:
                ops.extend(["c", e.viewer_id, e.ts, ""])
            # `cls is` first: an `isinstance` that misses costs ~0.2 us, and most events miss.
            if cls is ViewerJoined and isinstance(e, ViewerJoined):
                runs.pop(key, None)
                ops.extend(["j", e.viewer_id, e.ts, _profile(e)])
                continue
            if cls is ViewerLeft:
                runs.pop(key, None)
                ops.extend(["l", e.viewer_id, e.ts, ""])
                continue
            run = runs.get(key)
            if run is not None and run[0] >= 0 and e.ts - int(ops[run[0] + 2]) < timeout:
                ops[run[1] + 2] = e.ts  # the run's last proof moves on
                continue
            runs[key] = (run[1] if run is not None else -1, len(ops))
            ops.extend(["p", e.viewer_id, e.ts, ""])

    async def prepare(self, parts: Sequence[Part]) -> Write | None:
        """The batch's script calls, built now; the write sends them. Nothing else in the
        worker reads presence, so the pipeline runs the write behind the batch: waited
        for in line, the script's reply held up every batch (bench/viewer_engine.py read
        22.5-26.6k events/s with it, 29.3-35.0k with no presence write at all). Behind,
        in 6 alternating pairs: a median of 28.1k events/s (24.5-30.1k) against 26.3k
        (24.6-27.2k) in line, more in 5 pairs of 6."""
        latest = newest_by_room(parts)
        if not latest:
            return None
        if self._rooms is not None:
            await self._rooms.refresh(latest, since=min(part.record.taken for part in parts))
        by_room = self.ops(parts)

        async def write() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (room, book, partition), ops in by_room.items():
                    await scripts.call(
                        self._script, keys=room_keys(room, book, partition),
                        args=[_pack(ops), self._timeout_ms, partition], client=pipe)
                pipe.zadd(keys.METRIC_ROOMS, latest, gt=True)
                await scripts.execute(pipe)
        return write


def room_keys(room: str, book: int = 0, partition: int = 0) -> list[str]:
    return [keys.stats(room, book), keys.presence(room, book), keys.profiles(room, book),
            keys.watched(room, book), keys.carted(room, book), keys.pay_failed(room, book),
            keys.last_seen(room, book, partition)]
