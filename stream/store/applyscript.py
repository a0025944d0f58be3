"""The Lua script that applies a room's stock and order operations (see inventory.py)."""

from __future__ import annotations

# Loading a SKU's level: `available` becomes the loaded quantity and `loaded` moves by the
# difference, so available + reserved + sold == loaded holds. Shared by the room's APPLY
# script and a bucket's script, each placing it before its own code.
SET_LEVEL = """
local function set_level(key, qty)
  local before = tonumber(redis.call('HGET', key, 'available') or '0')
  redis.call('HINCRBY', key, 'loaded', qty - before)
  redis.call('HSET', key, 'available', qty)
  redis.call('HSETNX', key, 'reserved', 0)
  redis.call('HSETNX', key, 'sold', 0)
  redis.call('HINCRBY', key, 'version', 1)
end
"""

# One script applies a list of operations on one room, in order, atomically.
# KEYS: stats hash, skus set, applied stock.set ids, buyers hash, spend hash, seconds hash,
# bucketed SKUs hash, the broadcast's set of order ids (its pick lists read them back), then
# one deadlines zset per order-topic partition the call's ops name (`inventory.apply_keys`).
# ARGV: stock key prefix, order key prefix, retention s, max qty per line, JSON list of ops,
# JSON list of the partitions whose deadlines zsets are KEYS[9], KEYS[10], ... in order:
#   ["set", event_id, sku, qty, name, price, buckets]
#                                                   stock.set: `available` := qty
#   ["place", order_id, viewer, deadline, [[sku, qty, price(, taken)], ...], minute, second, ts, p]
#                                                   every line or none
#   ["pay", order_id, minute, second, ts, p]        confirm; after a lapse re-reserve or `expired`
#   ["release", order_id, reason, due_by, ts, p]    cancel/payment_failed ('' due_by) or expiry
#                                                   (the sweeper's: '' ts)
#   ["settle", order_id, p]                         a bucketed order's bucket moves are done
# `p` is the partition of the op's record on the order topic: the op adds to, removes from
# and expires only that partition's deadlines zset (see `expire` below for why).
# Returns {answers, expired}. Answers, per op: {'new'|'dup', status, reason, viewer, then
# sku, available, reserved, sold, version for every SKU it changed}. A replay ('dup')
# changes nothing and repeats the status. Expired: {op index, order_id, then the release's
# answer} per reservation that op's event ts expired first (fresh ones only, so a replayed
# batch, which finds them released already, reports none).
# A SKU split into buckets (buckets.py) has no counts here: a line of it comes with the
# buckets it took from (`taken`, '' if it fell short), and answers carry, in place of
# levels, `#sku, n, 'set'` (load the buckets) or `#sku, buckets, 'sell'|'free'|'hold'`
# (what the order's status asks of its buckets, on replays too, so a move cut short is
# redone; a walk's takes from buckets the order does not hold are given back).
# A bucketed order keeps its deadline until `settle`: a lost move is redone by the sweeper.
# Fresh outcomes are counted in the stats hash here, so those counts are exactly-once too:
# totals, and for the host's view per event-time minute (`m:<minute>:…` in stats) and
# second (`<second>:…` in the seconds hash, summed per show segment when read); a
# payment also records its buyer (first paid ts, spend). A fresh `place` adds the order
# to the broadcast's set (accepted or rejected: the pick list counts the rejected apart)
# and keeps each line's price (`prices`: `sku price;…`) for the amount per SKU.
# SKU and order keys are built from the prefixes: same `{room}` hash tag, same slot.
APPLY = SET_LEVEL + """
local stats, skus, stock_sets, buyers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local spend, seconds, bucketed, placed = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local stock, orders = ARGV[1], ARGV[2]
local retention, max_qty = ARGV[3], tonumber(ARGV[4])
-- partition -> its deadlines zset, as declared (cluster mode needs every key declared).
local zsets = {}
for i, p in ipairs(cjson.decode(ARGV[6])) do zsets[p] = KEYS[8 + i] end
local function zset(p)
  local key = zsets[p]
  if not key then error('no deadlines zset declared for partition ' .. tostring(p)) end
  return key
end

-- Per zset, the earliest deadline the in-script expiry has not looked at (see `expire`).
local next_due = {}

-- Each SKU's counts are read once a call and written back once at its end (`store`): on
-- the flash-sale SKU a `place` cost five commands on its hash (HGET, three HINCRBY and an
-- HMGET). With the counters below, a call of 500 orders fell from 55-70 to 34-47 us of
-- server time an order. The script is atomic: no reader sees the difference.
local counts = {}
local function get(sku)
  local c = counts[sku]
  if c == nil then
    local s = redis.call('HMGET', stock .. sku, 'available', 'reserved', 'sold', 'version')
    c = {known = s[1] ~= false, available = tonumber(s[1] or '0'),
         reserved = tonumber(s[2] or '0'), sold = tonumber(s[3] or '0'),
         version = tonumber(s[4] or '0'), dirty = false}
    counts[sku] = c
  end
  return c
end

local function store(sku)
  local c = counts[sku]
  if c and c.dirty then
    redis.call('HSET', stock .. sku, 'available', string.format('%d', c.available),
               'reserved', string.format('%d', c.reserved), 'sold', string.format('%d', c.sold),
               'version', string.format('%d', c.version))
    c.dirty = false
  end
end

local function level(sku, out)
  local c = get(sku)
  out[#out + 1] = sku
  out[#out + 1] = c.available; out[#out + 1] = c.reserved; out[#out + 1] = c.sold
  out[#out + 1] = c.version
end

local function move(sku, from, to, qty)
  local c = get(sku)
  c[from] = c[from] - qty
  c[to] = c[to] + qty
  c.version = c.version + 1
  c.dirty = true
end

-- Integer counters (stats, per minute and per second) are summed over the call and added
-- once at its end: a `place` added four of them one by one.
local added = {}
local function count(key, field, n)
  local h = added[key]
  if h == nil then h = {}; added[key] = h end
  h[field] = (h[field] or 0) + n
end
local placed_any = false

local function group(out, a, b, c)
  out[#out + 1] = a; out[#out + 1] = b; out[#out + 1] = c; out[#out + 1] = ''; out[#out + 1] = ''
end

-- The bucketed lines of an order record (`sku b,b;sku b`): sku -> buckets.
local function split(bk)
  local out = {}
  for sku, list in string.gmatch(bk or '', '([^ ;]+) ([%d,]+)') do out[sku] = list end
  return out
end

-- What the order's status asks of its buckets ('hold' while reserved: a walk of a
-- replayed order.placed that took from other buckets gives those back).
local function emit(out, bk, status)
  if not bk then return end
  local action = 'hold'
  if status == 'confirmed' then action = 'sell'
  elseif status == 'released' or status == 'rejected' then action = 'free' end
  for sku, list in pairs(split(bk)) do group(out, '#' .. sku, list, action) end
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
  local n = redis.call('HGET', key, 'buckets')
  -- Buckets are chosen at a SKU's first load: one with counts here stays whole.
  if not n and (op[7] or '') ~= '' and redis.call('EXISTS', key) == 0 then
    n = op[7]
    redis.call('HSET', key, 'buckets', n)
    redis.call('HSET', bucketed, op[3], n)
  end
  local fresh = redis.call('SADD', stock_sets, op[2]) == 1
  if fresh then
    if not n then
      -- Rare (a host's load): straight to the hash, past the cache.
      store(op[3])
      set_level(key, tonumber(op[4]))
      counts[op[3]] = nil
    end
    if op[5] ~= '' then redis.call('HSET', key, 'name', op[5]) end
    if op[6] ~= '' then redis.call('HSET', key, 'price', op[6]) end
    redis.call('SADD', skus, op[3])
  end
  local out = {fresh and 'new' or 'dup', '', '', ''}
  if n then group(out, '#' .. op[3], n, 'set') else level(op[3], out) end
  return out
end

local function pay(op)
  local key = orders .. op[2]
  local o = redis.call('HMGET', key, 'status', 'reason', 'lines', 'paid', 'paid_reason',
                       'amount', 'viewer', 'bk')
  if not o[1] then
    -- Remembered, so the order.placed that follows is confirmed, not left to expire.
    redis.call('HSET', key, 'paid_early', '1')
    redis.call('EXPIRE', key, retention)
    return {'new', 'rejected', 'unknown_order', ''}
  end
  local viewer, bk = o[7] or '', o[8]
  local inbuckets = split(bk)
  if o[4] then
    local out = {'dup', o[4], o[5] or '', viewer}
    emit(out, bk, o[1])
    return out
  end
  local status, reason = 'rejected', o[2] or ''
  if o[1] == 'reserved' then
    status, reason = 'confirmed', ''
    for _, l in ipairs(lines(o[3])) do
      if not inbuckets[l[1]] then move(l[1], 'reserved', 'sold', l[2]) end
    end
  elseif o[1] == 'released' and o[2] ~= 'cancelled' and bk then
    -- Its units went back to their buckets; a second walk is not worth a late payment.
    reason = 'expired'
  elseif o[1] == 'released' and o[2] ~= 'cancelled' then
    local ok = true
    for _, l in ipairs(lines(o[3])) do
      if get(l[1]).available < l[2] then ok = false end
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
    if not bk then redis.call('ZREM', zset(op[6]), op[2]) end
    for _, l in ipairs(lines(o[3])) do
      if not inbuckets[l[1]] then level(l[1], out) end
    end
    emit(out, bk, 'confirmed')
    local amount, minute, second = o[6] or '0', op[3] or '', op[4] or ''
    count(stats, 'orders_paid', 1)
    redis.call('HINCRBYFLOAT', stats, 'gmv', amount)
    if minute ~= '' then
      count(stats, 'm:' .. minute .. ':paid', 1)
      redis.call('HINCRBYFLOAT', stats, 'm:' .. minute .. ':gmv', amount)
    end
    if second ~= '' then
      count(seconds, second .. ':paid', 1)
      redis.call('HINCRBYFLOAT', seconds, second .. ':gmv', amount)
    end
    if viewer ~= '' then
      redis.call('HSETNX', buyers, viewer, op[5] or '0')
      redis.call('HINCRBYFLOAT', spend, viewer, amount)
    end
  else
    count(stats, 'payments_rejected:' .. reason, 1)
  end
  return out
end

local function place(op)
  local key = orders .. op[2]
  local o = redis.call('HMGET', key, 'placed', 'placed_reason', 'viewer', 'paid_early', 'bk',
                       'status')
  if o[1] then
    local out = {'dup', o[1], o[2] or '', o[3] or ''}
    emit(out, o[5], o[6])
    return out
  end
  redis.call('SADD', placed, op[2])
  placed_any = true
  local reason = nil
  for _, l in ipairs(op[5]) do
    if l[4] then
      -- Taken from the SKU's buckets already ('' when they fell short).
      if not redis.call('HGET', stock .. l[1], 'buckets') then reason = 'unknown_sku'; break end
      if l[2] > max_qty then reason = 'over_limit'; break end
      if l[4] == '' then reason = 'sold_out' end
    else
      local c = get(l[1])
      if not c.known then reason = 'unknown_sku'; break end
      if l[2] > max_qty then reason = 'over_limit'; break end
      if c.available < l[2] then reason = 'sold_out' end
    end
  end
  if reason then
    redis.call('HSET', key, 'status', 'rejected', 'reason', reason, 'viewer', op[3],
               'placed', 'rejected', 'placed_reason', reason)
    redis.call('EXPIRE', key, retention)
    count(stats, 'orders_rejected:' .. reason, 1)
    return {'new', 'rejected', reason, op[3]}
  end
  local out = {'new', 'reserved', '', op[3]}
  local text, prices, amount, bks = {}, {}, 0, {}
  for _, l in ipairs(op[5]) do
    if l[4] then
      bks[#bks + 1] = l[1] .. ' ' .. l[4]
    else
      move(l[1], 'available', 'reserved', l[2])
      level(l[1], out)
    end
    text[#text + 1] = l[1] .. ' ' .. l[2]
    prices[#prices + 1] = l[1] .. ' ' .. tostring(l[3])
    amount = amount + l[2] * l[3]
  end
  redis.call('HSET', key, 'status', 'reserved', 'reason', '', 'viewer', op[3],
             'lines', table.concat(text, ';'), 'prices', table.concat(prices, ';'),
             'deadline', op[4], 'amount', tostring(amount),
             'placed', 'reserved', 'placed_reason', '')
  if #bks > 0 then
    redis.call('HSET', key, 'bk', table.concat(bks, ';'))
    emit(out, table.concat(bks, ';'), 'reserved')
  end
  redis.call('EXPIRE', key, retention)
  count(stats, 'orders_reserved', 1)
  local minute, second = op[6] or '', op[7] or ''
  if minute ~= '' then
    count(stats, 'm:' .. minute .. ':orders', 1)
    for _, l in ipairs(op[5]) do count(stats, 'm:' .. minute .. ':units:' .. l[1], l[2]) end
  end
  if second ~= '' then count(seconds, second .. ':orders', 1) end
  if o[4] then
    -- The payment came first (another path, a retry): confirm what was just reserved.
    local paid = pay({'pay', op[2], minute, second, op[8], op[9]})
    redis.call('HSET', key, 'placed', paid[2], 'placed_reason', 'paid before placed')
    paid[1], paid[3] = 'new', 'paid before placed'
    return paid
  end
  redis.call('ZADD', zset(op[9]), op[4], op[2])
  local due = next_due[op[9]]
  if due and tonumber(op[4]) < due then next_due[op[9]] = tonumber(op[4]) end
  return out
end

local function release(op)
  local key = orders .. op[2]
  local o = redis.call('HMGET', key, 'status', 'reason', 'lines', 'deadline', 'viewer',
                       'r:' .. op[3], 'bk')
  -- An order that holds nothing here has no business in the zset. Its entry can be left in
  -- another zset than its pay's: the legacy single zset of a show running across the
  -- upgrade, which only the sweeper reads; without this its paid orders would stay due
  -- there for ever and fill the sweeper's pages.
  if (not o[1] or o[1] ~= 'reserved') and not o[7] then redis.call('ZREM', zset(op[6]), op[2]) end
  if not o[1] then return {'new', 'rejected', 'unknown_order', ''} end
  local viewer, bk = o[5] or '', o[7]
  local inbuckets = split(bk)
  if o[6] then
    local status, reason = string.match(o[6], '([^|]*)|(.*)')
    local out = {'dup', status, reason, viewer}
    emit(out, bk, o[1])
    return out
  end
  if o[1] ~= 'reserved' then
    local out = {'dup', o[1], o[2] or '', viewer}
    emit(out, bk, o[1])
    return out
  end
  if op[4] ~= '' and tonumber(o[4]) > tonumber(op[4]) then return {'dup', o[1], '', viewer} end
  local out = {'new', 'released', op[3], viewer}
  for _, l in ipairs(lines(o[3])) do
    if not inbuckets[l[1]] then
      move(l[1], 'reserved', 'available', l[2])
      level(l[1], out)
    end
  end
  emit(out, bk, 'released')
  redis.call('HSET', key, 'status', 'released', 'reason', op[3],
             'r:' .. op[3], 'released|' .. op[3])
  if not bk then redis.call('ZREM', zset(op[6]), op[2]) end
  count(stats, 'orders_released:' .. op[3], 1)
  return out
end

local function settle(op)
  redis.call('ZREM', zset(op[3]), op[2])
  return {'new', '', '', ''}
end

-- Expiry on event time: before an op that carries an event ts, every reservation of its
-- partition whose deadline is before it is released (`expired`), as the sweeper would
-- have done had it run in time, so a backlog read in a burst gets the sequential answers.
-- Only the op's own partition: its events come in their order, so nothing of its orders
-- that came before this ts is still unread, while another partition may be read behind
-- this one and still hold a payment made before the deadline (docs/decisions.md: "Expiry
-- inside the room's script"). Bucketed orders are left to the sweeper: their units
-- return to buckets only after this script, too late for the walks of this batch.
-- Skipped entries stay at the head of the due range (sorted by deadline), so a zset's
-- `skip` carries over the ops of this call: each is read once per call, not once per op
-- (only a place more than a TTL older than an earlier op of the call could slip in
-- before them and wait for the sweeper). 100 ids a page: most ops find none due, and a
-- burst of expiries pages on without one reply of thousands.
local skip, expired = {}, {}
local PAGE = 100
local function expire(i, ts, p)
  -- Nothing can be due before the earliest deadline left: most ops of a call skip the
  -- zset (a ZRANGEBYSCORE per op measured ~50% more server time per `place`).
  local first = next_due[p]
  if first and tonumber(ts) <= first then return end
  local deadlines, skipped = zset(p), skip[p] or 0
  while true do
    local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', '(' .. ts, 'LIMIT', skipped,
                           PAGE)
    for _, oid in ipairs(due) do
      if redis.call('HGET', orders .. oid, 'bk') then
        -- A bucketed order stays in the zset, so it is skipped from now on (which also
        -- ends this loop: every entry read is either removed or skipped).
        skipped = skipped + 1
      else
        -- Released, or removed by `release` as holding nothing: it leaves the zset.
        local out = release({'release', oid, 'expired', '', '', p})
        if out[1] == 'new' and out[2] == 'released' then
          table.insert(out, 1, oid)
          table.insert(out, 1, i)
          expired[#expired + 1] = out
        end
      end
    end
    if #due < PAGE then break end
  end
  skip[p] = skipped
  local head = redis.call('ZRANGE', deadlines, skipped, skipped, 'WITHSCORES')
  next_due[p] = head[2] and tonumber(head[2]) or math.huge
end

-- Where each op keeps its event ts (the sweeper's releases and `set` have none) and its
-- partition.
local ts_at = {place = 8, pay = 5, release = 5}
local p_at = {place = 9, pay = 6, release = 6}
local apply = {set = stock_set, place = place, pay = pay, release = release, settle = settle}
local results = {}
for i, op in ipairs(cjson.decode(ARGV[5])) do
  local at = ts_at[op[1]]
  local ts = at and op[at]
  if ts and ts ~= '' then expire(i, ts, op[p_at[op[1]]]) end
  results[i] = apply[op[1]](op)
end
-- No pcall around the ops to write back what came before a failing one: it cost 8 us a
-- call (12% of a one-order call). Redis refuses a write (OOM, READONLY) at a script's
-- first one, before anything is written; any other error here is a bug in the ops.
for sku in pairs(counts) do store(sku) end
for key, fields in pairs(added) do
  for field, n in pairs(fields) do redis.call('HINCRBY', key, field, n) end
end
if placed_any then redis.call('EXPIRE', placed, retention) end
return {results, expired}
"""
