"""A hot SKU's stock split into buckets, each on a slot of its own.

A flash sale puts every order of a room on one slot, so one Redis core. `stock.set` with
`buckets: N` splits the SKU's stock into N buckets (`lc:{room|sku|b}:*`), loaded with
an even share each. An order takes from its home bucket (by order id) and, when that is
dry, walks on to the next ones, taking what each has until its line is complete; a line
that is still short after every bucket gives back what it took and is `sold_out`. Each
bucket script touches one bucket's keys only, so one slot.

Each bucket remembers what every order took from it (`t:N`, then `s:N` once sold or
`f:N` once freed, `p` for passed dry), so a redelivered order reads its walk back and
never takes from a second bucket what it took from the first. The order's own record,
its status and the room's counts stay in the room's script (inventory.py), which is
the authority: it tells which buckets to sell or free, and the bucket moves follow.

The stock everyone sees is the sum of the buckets. Each bucket keeps
`available + reserved + sold == loaded` atomically, so sums read bucket by bucket keep
it too, at every sample.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from stream.core.models import StockUpdate
from stream.store import keys, scripts
from stream.store.applyscript import SET_LEVEL
from stream.store.connect import Client

NUMERIC = ("available", "reserved", "sold", "loaded", "version")

# KEYS: the bucket's stock hash, its orders hash, its applied stock.set ids.
# ARGV: retention s, JSON list of ops:
#   ["set", event_id, qty]    this bucket's share of a stock.set: `available` := qty
#   ["take", order_id, need]  reserve up to `need` (what is there); `p` if dry
#   ["sell", order_id]        what the order took: reserved -> sold
#   ["free", order_id]        what the order took: reserved -> available
# Returns per op: the order's record here ('' for set), available, reserved, sold, version.
# A repeated op changes nothing and returns the same record.
BUCKET = SET_LEVEL + """
local stock, orders, sets = KEYS[1], KEYS[2], KEYS[3]
local retention = ARGV[1]

local function move(from, to, n)
  redis.call('HINCRBY', stock, from, -n)
  redis.call('HINCRBY', stock, to, n)
  redis.call('HINCRBY', stock, 'version', 1)
end

local function answer(rec)
  local s = redis.call('HMGET', stock, 'available', 'reserved', 'sold', 'version')
  return {rec, s[1] or '0', s[2] or '0', s[3] or '0', s[4] or '0'}
end

local function settle(id, to, mark)
  local rec = redis.call('HGET', orders, id)
  local n = rec and tonumber(string.match(rec, '^t:(%d+)$'))
  if n and n > 0 then
    move('reserved', to, n)
    rec = mark .. n
    redis.call('HSET', orders, id, rec)
  end
  return rec or ''
end

local results = {}
for i, op in ipairs(cjson.decode(ARGV[2])) do
  local rec = ''
  if op[1] == 'set' then
    if redis.call('SADD', sets, op[2]) == 1 then
      set_level(stock, tonumber(op[3]))
    end
  elseif op[1] == 'take' then
    rec = redis.call('HGET', orders, op[2])
    if not rec then
      local n = math.min(tonumber(redis.call('HGET', stock, 'available') or '0'), op[3])
      if n > 0 then
        move('available', 'reserved', n)
        rec = 't:' .. n
      else
        rec = 'p'
      end
      redis.call('HSET', orders, op[2], rec)
      redis.call('EXPIRE', orders, retention)
    end
  elseif op[1] == 'sell' then
    rec = settle(op[2], 'sold', 's:')
  elseif op[1] == 'free' then
    rec = settle(op[2], 'available', 'f:')
  end
  results[i] = answer(rec)
end
return results
"""


def shares(qty: int, n: int) -> list[int]:
    """`qty` split over `n` buckets as evenly as it goes (the first ones get the rest)."""
    return [qty // n + (1 if b < qty % n else 0) for b in range(n)]


def home(order_id: str, n: int) -> int:
    """The bucket an order tries first: stable across processes (not Python's hash)."""
    return zlib.crc32(order_id.encode()) % n


def taken(rec: str) -> int:
    """Units an order's record in a bucket says it took there (0 for passed dry)."""
    return int(rec[2:]) if rec[:2] in ("t:", "s:", "f:") else 0


@dataclass(slots=True)
class Walk:
    """One order line's way through a SKU's buckets."""

    order_id: str
    sku: str
    need: int
    n: int
    visited: int = 0
    total: int = 0
    buckets: list[int] = field(default_factory=list)  # those it took from, in order

    @property
    def done(self) -> bool:
        return self.total >= self.need or self.visited >= self.n

    @property
    def complete(self) -> bool:
        return self.total >= self.need

    def text(self) -> str:
        """The buckets for the room's order record (`0,3`); '' when the line is short."""
        return ",".join(map(str, self.buckets)) if self.complete else ""


class Buckets:
    """Runs bucket scripts: loads, walks, sells and frees, a pipeline per step."""

    def __init__(self, redis: Client, *, retention_s: int) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self._script = redis.register_script(BUCKET)

    async def _run(self, room_id: str, calls: dict[tuple[str, int], list[list[object]]]
                   ) -> dict[tuple[str, int], list[list[bytes]]]:
        """One script call per (sku, bucket) with its ops, all in one pipeline."""
        if not calls:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for (sku, b), ops in calls.items():
                await scripts.call(
                    self._script,
                    keys=[keys.bucket_stock(room_id, sku, b), keys.bucket_orders(room_id, sku, b),
                          keys.bucket_sets(room_id, sku, b)],
                    args=[self.retention_s, orjson.dumps(ops)], client=pipe)
            answers = await scripts.execute(pipe)
        return dict(zip(calls, answers, strict=True))

    async def load(self, room_id: str, loads: Iterable[tuple[str, str, int, int]]) -> None:
        """(event_id, sku, qty, n): each bucket set to its share, once per event id."""
        calls: dict[tuple[str, int], list[list[object]]] = {}
        for event_id, sku, qty, n in loads:
            for b, share in enumerate(shares(qty, n)):
                calls.setdefault((sku, b), []).append(["set", event_id, share])
        await self._run(room_id, calls)

    async def walk(self, room_id: str, walks: Sequence[Walk]) -> None:
        """Take every line's units, bucket after bucket from its home; one round trip a
        step, and a step more only for lines whose bucket was short."""
        going = [w for w in walks if not w.done]
        while going:
            calls: dict[tuple[str, int], list[list[object]]] = {}
            at: list[tuple[Walk, tuple[str, int], int]] = []
            for w in going:
                b = (home(w.order_id, w.n) + w.visited) % w.n
                ops = calls.setdefault((w.sku, b), [])
                at.append((w, (w.sku, b), len(ops)))
                ops.append(["take", w.order_id, w.need - w.total])
            answers = await self._run(room_id, calls)
            for w, call, i in at:
                rec = answers[call][i][0].decode()
                got = taken(rec)
                w.visited += 1
                if got:
                    w.total += got
                    w.buckets.append(call[1])
            going = [w for w in going if not w.done]

    async def settle(self, room_id: str,
                     moves: Iterable[tuple[str, str, str, Iterable[int]]]) -> set[str]:
        """(order_id, sku, 'sell' | 'free', buckets): applied once each; returns the SKUs."""
        calls: dict[tuple[str, int], list[list[object]]] = {}
        for order_id, sku, action, buckets in moves:
            for b in buckets:
                calls.setdefault((sku, b), []).append([action, order_id])
        await self._run(room_id, calls)
        return {sku for sku, _ in calls}

    async def levels(self, room_id: str, counts: dict[str, int], *, ts: int) -> list[StockUpdate]:
        """The SKUs' live stock, summed over their buckets; the version (the sum of the
        buckets') grows with every change of any of them."""
        return [StockUpdate(room_id=room_id, sku=sku, available=s["available"],
                            reserved=s["reserved"], sold=s["sold"], version=s["version"], ts=ts)
                for sku, s in (await sums(self.redis, room_id, counts)).items()]


async def sums(redis: Client, room_id: str, counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """sku -> the sum of its buckets' available, reserved, sold, loaded, version."""
    if not counts:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for sku, n in counts.items():
            for b in range(n):
                pipe.hmget(keys.bucket_stock(room_id, sku, b), *NUMERIC)
        rows = iter(await pipe.execute())
    out: dict[str, dict[str, int]] = {}
    for sku, n in counts.items():
        total = dict.fromkeys(NUMERIC, 0)
        for _ in range(n):
            for name, value in zip(NUMERIC, next(rows), strict=True):
                total[name] += int(value or 0)
        out[sku] = total
    return out


async def counts(redis: Client, room_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """room -> {sku: bucket count} of its bucketed SKUs."""
    rooms = sorted(set(room_ids))
    if not rooms:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for room in rooms:
            pipe.hgetall(keys.bucketed(room))
        answers = await pipe.execute()
    return {room: {k.decode(): int(v) for k, v in found.items()}
            for room, found in zip(rooms, answers, strict=True)}


async def stock_rows(redis: Client, room_id: str, skus: Sequence[str], fields: Sequence[str], *,
                     consistent: bool = False) -> list[list[bytes | None]]:
    """HMGET of `fields` from each SKU's hash, with bucketed SKUs' counts summed over their
    buckets (each bucket read atomically, so the sum keeps the books' equation)."""
    async with redis.pipeline(transaction=consistent) as pipe:
        for sku in skus:
            pipe.hmget(keys.stock_prefix(room_id) + sku, *fields, "buckets")
        rows = await pipe.execute()
    split = {sku: int(row[-1]) for sku, row in zip(skus, rows, strict=True) if row[-1]}
    found = await sums(redis, room_id, split)
    out: list[list[bytes | None]] = []
    for sku, row in zip(skus, rows, strict=True):
        values = list(row[:-1])
        if sku in found:
            values = [str(found[sku][f]).encode() if f in NUMERIC else v
                      for f, v in zip(fields, values, strict=True)]
        out.append(values)
    return out
