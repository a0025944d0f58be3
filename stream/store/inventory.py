"""Stock in Redis: every change is one atomic script, idempotent by order or event id.

Per SKU a hash holds `available`, `reserved`, `sold`, `loaded` and a `version` that
grows with every change (so readers can drop stale updates). At every moment
`available + reserved + sold == loaded`, where `loaded` is the sum of all stock.set
adjustments (the SPEC's "loaded + restocked").

All keys of a room carry the hash tag `{room}`; the scripts derive SKU keys from the
room prefix, which stays inside the slot of the declared keys on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

from stream.core.counters import minute_of
from stream.core.models import (
    OrderCancelled,
    OrderEvent,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    StockSet,
    StockUpdate,
)
from stream.store import keys, scripts, stockread
from stream.store.replies import text
from stream.store.stockread import StockReader

# Orders are kept this long after their last change, for late payments and the review.
ORDER_RETENTION_S = 7 * 24 * 3600
# Ops per script call: long enough to amortise the call, short enough not to stall Redis.
CHUNK = 500

# One script applies a list of operations on one room, in order, atomically.
# KEYS: stats hash, deadlines zset, skus set, applied stock.set ids, buyers hash, spend hash,
# seconds hash, the broadcast's set of order ids (its pick lists read them back).
# ARGV: stock key prefix, order key prefix, retention s, max qty per line, JSON list of ops:
#   ["set", event_id, sku, qty, name, price]       stock.set: `available` := qty
#   ["place", order_id, viewer, deadline, [[sku, qty, price], ...], minute, second, ts]
#                                                   every line or none
#   ["pay", order_id, minute, second, ts]           confirm; after a lapse re-reserve or `expired`
#   ["release", order_id, reason, due_by]           cancel/payment_failed ('' due_by) or expiry
# Returns per op: {'new'|'dup', status, reason, viewer, then sku, available, reserved, sold,
# version for every SKU it changed}. A replay ('dup') changes nothing and repeats the status.
# Fresh outcomes are counted in the stats hash here, so those counts are exactly-once too:
# totals, and for the host's view per event-time minute (`m:<minute>:…` in stats) and
# second (`<second>:…` in the seconds hash, summed per show segment when read); a
# payment also records its buyer (first paid ts, spend). A fresh `place` adds the order
# to the broadcast's set (accepted or rejected: the pick list counts the rejected apart)
# and keeps each line's price (`prices`: `sku price;…`) for the amount per SKU.
# SKU and order keys are built from the prefixes: same `{room}` hash tag, same slot.
APPLY = """
local stats, deadlines, skus, stock_sets = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local buyers, spend, seconds, placed = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local stock, orders = ARGV[1], ARGV[2]
local retention, max_qty = ARGV[3], tonumber(ARGV[4])

local function level(sku, out)
  local s = redis.call('HMGET', stock .. sku, 'available', 'reserved', 'sold', 'version')
  out[#out + 1] = sku
  out[#out + 1] = s[1]; out[#out + 1] = s[2]; out[#out + 1] = s[3]; out[#out + 1] = s[4]
end

local function move(sku, from, to, qty)
  local k = stock .. sku
  redis.call('HINCRBY', k, from, -qty)
  redis.call('HINCRBY', k, to, qty)
  redis.call('HINCRBY', k, 'version', 1)
end

local function lines(text)
  local out = {}
  for sku, qty in string.gmatch(text or '', '([^ ;]+) (%d+)') do
    out[#out + 1] = {sku, tonumber(qty)}
  end
  return out
end

local function stock_set(op)
  local key = stock .. op[3]
  local fresh = redis.call('SADD', stock_sets, op[2]) == 1
  if fresh then
    local qty = tonumber(op[4])
    local before = tonumber(redis.call('HGET', key, 'available') or '0')
    redis.call('HINCRBY', key, 'loaded', qty - before)
    redis.call('HSET', key, 'available', qty)
    redis.call('HSETNX', key, 'reserved', 0)
    redis.call('HSETNX', key, 'sold', 0)
    redis.call('HINCRBY', key, 'version', 1)
    if op[5] ~= '' then redis.call('HSET', key, 'name', op[5]) end
    if op[6] ~= '' then redis.call('HSET', key, 'price', op[6]) end
    redis.call('SADD', skus, op[3])
  end
  local out = {fresh and 'new' or 'dup', '', '', ''}
  level(op[3], out)
  return out
end

local function pay(op)
  local key = orders .. op[2]
  local o = redis.call('HMGET', key, 'status', 'reason', 'lines', 'paid', 'paid_reason',
                       'amount', 'viewer')
  if not o[1] then
    -- Remembered, so the order.placed that follows is confirmed, not left to expire.
    redis.call('HSET', key, 'paid_early', '1')
    redis.call('EXPIRE', key, retention)
    return {'new', 'rejected', 'unknown_order', ''}
  end
  local viewer = o[7] or ''
  if o[4] then return {'dup', o[4], o[5] or '', viewer} end
  local status, reason = 'rejected', o[2] or ''
  if o[1] == 'reserved' then
    status, reason = 'confirmed', ''
    for _, l in ipairs(lines(o[3])) do move(l[1], 'reserved', 'sold', l[2]) end
  elseif o[1] == 'released' and o[2] ~= 'cancelled' then
    local ok = true
    for _, l in ipairs(lines(o[3])) do
      if tonumber(redis.call('HGET', stock .. l[1], 'available') or '0') < l[2] then ok = false end
    end
    if ok then
      status, reason = 'confirmed', 're-reserved after ' .. o[2]
      for _, l in ipairs(lines(o[3])) do move(l[1], 'available', 'sold', l[2]) end
    else
      reason = 'expired'
    end
  end
  redis.call('HSET', key, 'paid', status, 'paid_reason', reason)
  local out = {'new', status, reason, viewer}
  if status == 'confirmed' then
    redis.call('HSET', key, 'status', 'confirmed', 'reason', reason)
    redis.call('ZREM', deadlines, op[2])
    for _, l in ipairs(lines(o[3])) do level(l[1], out) end
    local amount, minute, second = o[6] or '0', op[3] or '', op[4] or ''
    redis.call('HINCRBY', stats, 'orders_paid', 1)
    redis.call('HINCRBYFLOAT', stats, 'gmv', amount)
    if minute ~= '' then
      redis.call('HINCRBY', stats, 'm:' .. minute .. ':paid', 1)
      redis.call('HINCRBYFLOAT', stats, 'm:' .. minute .. ':gmv', amount)
    end
    if second ~= '' then
      redis.call('HINCRBY', seconds, second .. ':paid', 1)
      redis.call('HINCRBYFLOAT', seconds, second .. ':gmv', amount)
    end
    if viewer ~= '' then
      redis.call('HSETNX', buyers, viewer, op[5] or '0')
      redis.call('HINCRBYFLOAT', spend, viewer, amount)
    end
  else
    redis.call('HINCRBY', stats, 'payments_rejected:' .. reason, 1)
  end
  return out
end

local function place(op)
  local key = orders .. op[2]
  local o = redis.call('HMGET', key, 'placed', 'placed_reason', 'viewer', 'paid_early')
  if o[1] then return {'dup', o[1], o[2] or '', o[3] or ''} end
  redis.call('SADD', placed, op[2])
  redis.call('EXPIRE', placed, retention)
  local reason = nil
  for _, l in ipairs(op[5]) do
    local available = redis.call('HGET', stock .. l[1], 'available')
    if not available then reason = 'unknown_sku'; break end
    if l[2] > max_qty then reason = 'over_limit'; break end
    if tonumber(available) < l[2] then reason = 'sold_out' end
  end
  if reason then
    redis.call('HSET', key, 'status', 'rejected', 'reason', reason, 'viewer', op[3],
               'placed', 'rejected', 'placed_reason', reason)
    redis.call('EXPIRE', key, retention)
    redis.call('HINCRBY', stats, 'orders_rejected:' .. reason, 1)
    return {'new', 'rejected', reason, op[3]}
  end
  local out = {'new', 'reserved', '', op[3]}
  local text, prices, amount = {}, {}, 0
  for _, l in ipairs(op[5]) do
    move(l[1], 'available', 'reserved', l[2])
    level(l[1], out)
    text[#text + 1] = l[1] .. ' ' .. l[2]
    prices[#prices + 1] = l[1] .. ' ' .. tostring(l[3])
    amount = amount + l[2] * l[3]
  end
  redis.call('HSET', key, 'status', 'reserved', 'reason', '', 'viewer', op[3],
             'lines', table.concat(text, ';'), 'prices', table.concat(prices, ';'),
             'deadline', op[4], 'amount', tostring(amount),
             'placed', 'reserved', 'placed_reason', '')
  redis.call('EXPIRE', key, retention)
  redis.call('HINCRBY', stats, 'orders_reserved', 1)
  local minute, second = op[6] or '', op[7] or ''
  if minute ~= '' then
    redis.call('HINCRBY', stats, 'm:' .. minute .. ':orders', 1)
    for _, l in ipairs(op[5]) do
      redis.call('HINCRBY', stats, 'm:' .. minute .. ':units:' .. l[1], l[2])
    end
  end
  if second ~= '' then redis.call('HINCRBY', seconds, second .. ':orders', 1) end
  if o[4] then
    -- The payment came first (another path, a retry): confirm what was just reserved.
    local paid = pay({'pay', op[2], minute, second, op[8]})
    redis.call('HSET', key, 'placed', paid[2], 'placed_reason', 'paid before placed')
    paid[1], paid[3] = 'new', 'paid before placed'
    return paid
  end
  redis.call('ZADD', deadlines, op[4], op[2])
  return out
end

local function release(op)
  local key = orders .. op[2]
  local o = redis.call('HMGET', key, 'status', 'reason', 'lines', 'deadline', 'viewer',
                       'r:' .. op[3])
  if not o[1] then return {'new', 'rejected', 'unknown_order', ''} end
  local viewer = o[5] or ''
  if o[6] then
    local status, reason = string.match(o[6], '([^|]*)|(.*)')
    return {'dup', status, reason, viewer}
  end
  if o[1] ~= 'reserved' then return {'dup', o[1], o[2] or '', viewer} end
  if op[4] ~= '' and tonumber(o[4]) > tonumber(op[4]) then return {'dup', o[1], '', viewer} end
  local out = {'new', 'released', op[3], viewer}
  for _, l in ipairs(lines(o[3])) do
    move(l[1], 'reserved', 'available', l[2])
    level(l[1], out)
  end
  redis.call('HSET', key, 'status', 'released', 'reason', op[3],
             'r:' .. op[3], 'released|' .. op[3])
  redis.call('ZREM', deadlines, op[2])
  redis.call('HINCRBY', stats, 'orders_released:' .. op[3], 1)
  return out
end

local apply = {set = stock_set, place = place, pay = pay, release = release}
local results = {}
for i, op in ipairs(cjson.decode(ARGV[5])) do results[i] = apply[op[1]](op) end
return results
"""

Op = list[object]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one operation did: `fresh` is False for a replay, which changed nothing."""

    fresh: bool
    status: str
    reason: str
    viewer_id: str
    levels: tuple[StockUpdate, ...]


def parse(answer: Sequence[bytes | str | int | None], *, room_id: str, ts: int) -> Outcome:
    """Decode one op's flat answer: fresh, status, reason, viewer, then 5 fields per SKU."""
    text = [a.decode() if isinstance(a, bytes) else a for a in answer]
    levels = tuple(
        StockUpdate(room_id=room_id, sku=str(text[i]), available=int(text[i + 1] or 0),
                    reserved=int(text[i + 2] or 0), sold=int(text[i + 3] or 0),
                    version=int(text[i + 4] or 0), ts=ts)
        for i in range(4, len(text), 5)
    )
    return Outcome(text[0] == "new", str(text[1]), str(text[2] or ""), str(text[3] or ""),
                   levels)


class Inventory:
    """Turns events into script operations and runs them, a room and a chunk per call."""

    def __init__(self, redis: Redis, *, reservation_ttl_ms: int = 15 * 60_000,
                 max_qty_per_line: int = 10) -> None:
        self.redis = redis
        self.reservation_ttl_ms = reservation_ttl_ms
        self.max_qty_per_line = max_qty_per_line
        self._apply = redis.register_script(APPLY)

    def op(self, event: StockSet | OrderEvent) -> Op:
        """The script operation for one event (pure); the event's minute and second key
        the host's view counts of its outcome."""
        if isinstance(event, StockSet):
            return ["set", event.event_id, event.sku, event.qty, event.name or "",
                    "" if event.price is None else str(event.price)]
        if isinstance(event, OrderPlaced):
            return ["place", event.order_id, event.viewer_id,
                    str(event.ts + self.reservation_ttl_ms),
                    [[i.sku, i.qty, i.price] for i in event.items],
                    str(minute_of(event.ts)), str(event.ts // 1000), str(event.ts)]
        if isinstance(event, OrderPaid):
            return ["pay", event.order_id, str(minute_of(event.ts)), str(event.ts // 1000),
                    str(event.ts)]
        if isinstance(event, OrderCancelled):
            return ["release", event.order_id, "cancelled", ""]
        if isinstance(event, OrderPaymentFailed):
            return ["release", event.order_id, "payment_failed", ""]
        raise TypeError(f"not an inventory event: {event!r}")  # pragma: no cover

    async def queue(self, pipe: Redis, room_id: str, ops: Sequence[Op], *, book: int = 0) -> int:
        """Queue `ops` for one room on `pipe`, their outcomes counted on the books of the
        room's broadcast `book`; returns how many calls (answers) it added."""
        calls = 0
        for lo in range(0, len(ops), CHUNK):
            await self._apply(
                keys=[keys.stats(room_id, book), keys.deadlines(room_id), keys.skus(room_id),
                      keys.stock_sets(room_id), keys.buyers(room_id, book),
                      keys.spend(room_id, book), keys.seconds(room_id, book),
                      keys.book_orders(room_id, book)],
                args=[keys.stock_prefix(room_id), keys.order_prefix(room_id),
                      ORDER_RETENTION_S, self.max_qty_per_line,
                      orjson.dumps(ops[lo:lo + CHUNK])],
                client=pipe)
            calls += 1
        return calls

    async def run(self, room_id: str, ops: Sequence[Op], *, ts: int,
                  book: int = 0) -> list[Outcome]:
        """Apply `ops` now and return one Outcome per op."""
        async with self.redis.pipeline(transaction=False) as pipe:
            await self.queue(pipe, room_id, ops, book=book)
            answers = await scripts.execute(pipe)
        return [parse(a, room_id=room_id, ts=ts) for chunk in answers for a in chunk]

    async def expire_due(self, room_id: str, *, now_ms: int, limit: int = 500,
                         book: int = 0) -> list[tuple[str, Outcome]]:
        """Release reservations whose deadline has passed on the room's clock.

        Returns (order_id, outcome) per due order; an outcome that is not fresh means
        the order was paid or cancelled first and nothing changed.
        """
        due = [text(d) for d in await self.redis.zrangebyscore(
            keys.deadlines(room_id), "-inf", now_ms, start=0, num=limit)]
        if not due:
            return []
        outcomes = await self.run(room_id, [["release", oid, "expired", str(now_ms)]
                                            for oid in due], ts=now_ms, book=book)
        return list(zip(due, outcomes, strict=True))

    async def levels(self, room_id: str) -> list[StockUpdate]:
        """The room's current stock, one record per SKU."""
        return await StockReader(self.redis).levels(room_id)

    async def audit(self, room_id: str) -> Audit:
        """One consistent read of the room's books: oversold units and broken invariants."""
        rows = await stockread.rows(self.redis, room_id, "available", "reserved", "sold",
                                    "loaded", consistent=True)
        audit = Audit(room_id=room_id, skus=len(rows))
        for sku, row in rows:
            a, r, s, loaded = (int(x or 0) for x in row)
            audit.oversold += max(0, r + s - loaded)
            if a + r + s != loaded or min(a, r, s) < 0:
                audit.problems.append(f"{room_id}/{sku}: available {a} + reserved {r} + "
                                      f"sold {s} != loaded {loaded}")
        return audit


@dataclass(slots=True)
class Audit:
    room_id: str
    skus: int
    oversold: int = 0
    problems: list[str] = field(default_factory=list)
