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

from redis.asyncio import Redis

from stream import keys
from stream.models import (
    OrderCancelled,
    OrderEvent,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    OrderResult,
    StockSet,
    StockUpdate,
)

# Orders are kept this long after their last change, for late payments and the review.
ORDER_RETENTION_S = 7 * 24 * 3600

_STOCK_OUT = """
local function level(prefix, sku, out)
  local s = redis.call('HMGET', prefix .. sku, 'available', 'reserved', 'sold', 'version')
  out[#out + 1] = sku
  out[#out + 1] = s[1]; out[#out + 1] = s[2]; out[#out + 1] = s[3]; out[#out + 1] = s[4]
end
local function move(prefix, sku, field_from, field_to, qty)
  local k = prefix .. sku
  if field_from then redis.call('HINCRBY', k, field_from, -qty) end
  redis.call('HINCRBY', k, field_to, qty)
  redis.call('HINCRBY', k, 'version', 1)
end
local function lines(text)
  local out = {}
  for sku, qty in string.gmatch(text or '', '([^ ;]+) (%d+)') do
    out[#out + 1] = {sku, tonumber(qty)}
  end
  return out
end
"""

# KEYS: sku hash, skus set, applied stock.set ids.  ARGV: event_id, sku, qty, name, price.
STOCK_SET = _STOCK_OUT + """
local fresh = redis.call('SADD', KEYS[3], ARGV[1])
if fresh == 1 then
  local available = tonumber(redis.call('HGET', KEYS[1], 'available') or '0')
  local qty = tonumber(ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'loaded', qty - available)
  redis.call('HSET', KEYS[1], 'available', qty)
  redis.call('HSETNX', KEYS[1], 'reserved', 0)
  redis.call('HSETNX', KEYS[1], 'sold', 0)
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'name', ARGV[4]) end
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'price', ARGV[5]) end
  redis.call('SADD', KEYS[2], ARGV[2])
end
local out = {fresh == 1 and 'new' or 'dup', '', ''}
local s = redis.call('HMGET', KEYS[1], 'available', 'reserved', 'sold', 'version')
out[4] = ARGV[2]; out[5] = s[1]; out[6] = s[2]; out[7] = s[3]; out[8] = s[4]
return out
"""

# Order scripts also count their fresh outcomes in the room's stats hash (KEYS[3]), so
# the counts are exactly-once for free: a replay returns before it counts.

# KEYS: order hash, deadlines, stats.  ARGV: stock prefix, order_id, viewer, deadline,
# max qty, retention, then sku, qty, price per line.  Every line or none.
RESERVE = _STOCK_OUT + """
local o = redis.call('HMGET', KEYS[1], 'status', 'reason')
if o[1] then return {'dup', o[1], o[2] or ''} end
local reason = nil
local n = (#ARGV - 6) / 3
for i = 0, n - 1 do
  local sku, qty = ARGV[7 + 3 * i], tonumber(ARGV[8 + 3 * i])
  local available = redis.call('HGET', ARGV[1] .. sku, 'available')
  if not available then reason = 'unknown_sku'; break end
  if qty > tonumber(ARGV[5]) then reason = 'over_limit'; break end
  if tonumber(available) < qty then reason = 'sold_out' end
end
if reason then
  redis.call('HSET', KEYS[1], 'status', 'rejected', 'reason', reason, 'viewer', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'orders_rejected:' .. reason, 1)
  return {'new', 'rejected', reason}
end
local out = {'new', 'reserved', ''}
local text, amount = {}, 0
for i = 0, n - 1 do
  local sku, qty = ARGV[7 + 3 * i], tonumber(ARGV[8 + 3 * i])
  move(ARGV[1], sku, 'available', 'reserved', qty)
  level(ARGV[1], sku, out)
  text[#text + 1] = sku .. ' ' .. qty
  amount = amount + qty * tonumber(ARGV[9 + 3 * i])
end
redis.call('HSET', KEYS[1], 'status', 'reserved', 'reason', '', 'viewer', ARGV[3],
           'lines', table.concat(text, ';'), 'deadline', ARGV[4], 'amount', tostring(amount))
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'orders_reserved', 1)
return out
"""

# KEYS: order hash, deadlines, stats.  ARGV: stock prefix, order_id.
# A payment after the reservation lapsed is re-reserved if stock remains, else `expired`.
CONFIRM = _STOCK_OUT + """
local o = redis.call('HMGET', KEYS[1], 'status', 'reason', 'lines', 'paid', 'paid_reason',
                     'amount')
if not o[1] then return {'new', 'rejected', 'unknown_order'} end
if o[4] then return {'dup', o[4], o[5] or ''} end
local status, reason = 'rejected', o[2] or ''
local out = {}
if o[1] == 'reserved' then
  status, reason = 'confirmed', ''
  for _, l in ipairs(lines(o[3])) do move(ARGV[1], l[1], 'reserved', 'sold', l[2]) end
elseif o[1] == 'released' and o[2] ~= 'cancelled' then
  local ok = true
  for _, l in ipairs(lines(o[3])) do
    if tonumber(redis.call('HGET', ARGV[1] .. l[1], 'available') or '0') < l[2] then ok = false end
  end
  if ok then
    status, reason = 'confirmed', 're-reserved after ' .. o[2]
    for _, l in ipairs(lines(o[3])) do move(ARGV[1], l[1], 'available', 'sold', l[2]) end
  else
    reason = 'expired'
  end
end
if status == 'confirmed' then
  redis.call('HSET', KEYS[1], 'status', 'confirmed')
  redis.call('ZREM', KEYS[2], ARGV[2])
  for _, l in ipairs(lines(o[3])) do level(ARGV[1], l[1], out) end
  redis.call('HINCRBY', KEYS[3], 'orders_paid', 1)
  redis.call('HINCRBYFLOAT', KEYS[3], 'gmv', o[6] or '0')
else
  redis.call('HINCRBY', KEYS[3], 'payments_rejected:' .. reason, 1)
end
redis.call('HSET', KEYS[1], 'paid', status, 'paid_reason', reason)
local head = {'new', status, reason}
for _, v in ipairs(out) do head[#head + 1] = v end
return head
"""

# KEYS: order hash, deadlines, stats.  ARGV: stock prefix, order_id, reason, due-by (expiry).
RELEASE = _STOCK_OUT + """
local o = redis.call('HMGET', KEYS[1], 'status', 'reason', 'lines', 'deadline')
if not o[1] then return {'new', 'rejected', 'unknown_order'} end
if o[1] ~= 'reserved' then return {'dup', o[1], o[2] or ''} end
if ARGV[4] ~= '' and tonumber(o[4]) > tonumber(ARGV[4]) then return {'dup', o[1], ''} end
local out = {'new', 'released', ARGV[3]}
for _, l in ipairs(lines(o[3])) do
  move(ARGV[1], l[1], 'reserved', 'available', l[2])
  level(ARGV[1], l[1], out)
end
redis.call('HSET', KEYS[1], 'status', 'released', 'reason', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'orders_released:' .. ARGV[3], 1)
return out
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one script did: `fresh` is False for a replay, which changed nothing."""

    fresh: bool
    status: str
    reason: str
    levels: tuple[StockUpdate, ...]


def parse(answer: Sequence[bytes | str | int | None], *, room_id: str, ts: int) -> Outcome:
    """Decode a script's flat answer: fresh, status, reason, then 5 fields per SKU."""
    text = [a.decode() if isinstance(a, bytes) else a for a in answer]
    levels = tuple(
        StockUpdate(room_id=room_id, sku=str(text[i]), available=int(text[i + 1] or 0),
                    reserved=int(text[i + 2] or 0), sold=int(text[i + 3] or 0),
                    version=int(text[i + 4] or 0), ts=ts)
        for i in range(3, len(text), 5)
    )
    return Outcome(text[0] == "new", str(text[1]), str(text[2] or ""), levels)


class Inventory:
    """Queues inventory scripts on a pipeline and reads the answers back as Outcomes."""

    def __init__(self, redis: Redis, *, reservation_ttl_ms: int = 15 * 60_000,
                 max_qty_per_line: int = 10) -> None:
        self.redis = redis
        self.reservation_ttl_ms = reservation_ttl_ms
        self.max_qty_per_line = max_qty_per_line
        self._stock_set = redis.register_script(STOCK_SET)
        self._reserve = redis.register_script(RESERVE)
        self._confirm = redis.register_script(CONFIRM)
        self._release = redis.register_script(RELEASE)

    async def queue(self, pipe: Redis, event: StockSet | OrderEvent) -> None:
        """Add the script for `event` to `pipe` (a pipeline); its answer goes to `parse`."""
        room = event.room_id
        if isinstance(event, StockSet):
            await self._stock_set(
                keys=[keys.stock_prefix(room) + event.sku, keys.skus(room), keys.stock_sets(room)],
                args=[event.event_id, event.sku, event.qty, event.name or "",
                      "" if event.price is None else event.price],
                client=pipe)
            return
        order_keys = [keys.order_prefix(room) + event.order_id, keys.deadlines(room),
                      keys.stats(room)]
        prefix = keys.stock_prefix(room)
        if isinstance(event, OrderPlaced):
            args: list[str | int | float] = [
                prefix, event.order_id, event.viewer_id, event.ts + self.reservation_ttl_ms,
                self.max_qty_per_line, ORDER_RETENTION_S]
            for item in event.items:
                args += [item.sku, item.qty, item.price]
            await self._reserve(keys=order_keys, args=args, client=pipe)
        elif isinstance(event, OrderPaid):
            await self._confirm(keys=order_keys, args=[prefix, event.order_id], client=pipe)
        elif isinstance(event, OrderCancelled | OrderPaymentFailed):
            reason = "cancelled" if isinstance(event, OrderCancelled) else "payment_failed"
            await self._release(keys=order_keys, args=[prefix, event.order_id, reason, ""],
                                client=pipe)
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"not an inventory event: {event!r}")

    async def expire_due(self, room_id: str, *, now_ms: int,
                         limit: int = 500) -> list[tuple[tuple[str, str], Outcome]]:
        """Release reservations whose deadline has passed on the room's clock.

        Returns ((order_id, viewer_id), outcome) per due order; an outcome that is not
        fresh means the order was paid or cancelled first and nothing changed.
        """
        due = [d.decode() for d in await self.redis.zrangebyscore(
            keys.deadlines(room_id), "-inf", now_ms, start=0, num=limit)]
        if not due:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for oid in due:
                order_key = keys.order_prefix(room_id) + oid
                pipe.hget(order_key, "viewer")
                await self._release(keys=[order_key, keys.deadlines(room_id),
                                          keys.stats(room_id)],
                                    args=[keys.stock_prefix(room_id), oid, "expired", now_ms],
                                    client=pipe)
            answers = await pipe.execute()
        return [((oid, (viewer or b"").decode()), parse(answer, room_id=room_id, ts=now_ms))
                for oid, viewer, answer in zip(due, answers[::2], answers[1::2], strict=True)]

    async def levels(self, room_id: str) -> list[StockUpdate]:
        """The room's current stock, one record per SKU."""
        skus = sorted(s.decode() for s in await self.redis.smembers(keys.skus(room_id)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.hmget(keys.stock_prefix(room_id) + sku,
                           "available", "reserved", "sold", "version")
            rows = await pipe.execute()
        return [StockUpdate(room_id=room_id, sku=sku, available=int(r[0] or 0),
                            reserved=int(r[1] or 0), sold=int(r[2] or 0), version=int(r[3] or 0),
                            ts=0)
                for sku, r in zip(skus, rows, strict=True)]

    async def audit(self, room_id: str) -> Audit:
        """One consistent read of the room's books: oversold units and broken invariants."""
        skus = sorted(s.decode() for s in await self.redis.smembers(keys.skus(room_id)))
        async with self.redis.pipeline(transaction=True) as pipe:
            for sku in skus:
                pipe.hmget(keys.stock_prefix(room_id) + sku,
                           "available", "reserved", "sold", "loaded")
            rows = await pipe.execute()
        audit = Audit(room_id=room_id, skus=len(skus))
        for sku, row in zip(skus, rows, strict=True):
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


def result_of(event: OrderEvent, outcome: Outcome) -> OrderResult:
    return OrderResult(order_id=event.order_id, room_id=event.room_id, viewer_id=event.viewer_id,
                       status=outcome.status,  # type: ignore[arg-type]
                       reason=outcome.reason or None, ts=event.ts)
