"""Event time per room, advanced by wall time while the room is idle.

A replay at 100x moves the clock 100x faster; a silent room's clock still moves with
the wall, so a reservation expires (and, later, a nudge fires) without new events.

Clocks share a room's hash. `room` follows every event (the host's view times
presence out on it). `stock` follows only what inventory applies (stock loads and
orders), and the sweeper expires reservations on it. On `room`, viewer heartbeats read
ahead of a lagging order topic let it expire an order whose payment, earlier in event
time, was still on its way: the likely cause of one failure of the expiry show at 100x
beside another test run, where a `payment_failed` 118 s of show (1.2 s of wall) before
the deadline came out `expired`.

And `stock` is one clock for the room's orders on every partition of the order topic, so
it is not what the sweeper expires on either: one per partition (`stock_ms:<p>`,
`stock_wall_ms:<p>`) follows the orders applied from that partition only. A worker reading
a backlog reads the partitions apart in event time, and one partition's late payment once
expired, on the room's clock, an order on another whose `payment_failed`, before its
deadline, was still unread. The room-wide `stock` clock stays for the deadlines of before
the per-partition ones (keys.legacy_deadlines).

A partition's clock moves on by wall time only while nothing is waiting unread in it:
up to the last time its owner had applied the broker's every record there
(`keys.orders_read`, written by each worker for its own partitions once a second). While
the owner is down, or reads a backlog, the partition's clock stays at its newest applied
order, so no reservation expires whose payment may be the next record.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from stream.store import keys, scripts
from stream.store.connect import AnyPipeline, Client
from stream.store.replies import text

# KEYS: clock hash.  ARGV: wall ms, then (event ms, event field, wall field) per clock.
# Each clock only moves forward, and keeps the wall time of its last move. All of a room's
# clocks move in one call: a batch of orders from 8 partitions made 10 calls a room.
ADVANCE = """
for i = 2, #ARGV, 3 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i + 1]) or '-1')
  if tonumber(ARGV[i]) > current then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i], ARGV[i + 2], ARGV[1])
  end
end
return 1
"""

Clock = Literal["room", "stock"]
# (event field, wall field) per clock; `room`'s are the hash's first two, as before.
_FIELDS: dict[Clock, tuple[str, str]] = {"room": ("event_ms", "wall_ms"),
                                         "stock": ("stock_ms", "stock_wall_ms")}


def partition_fields(partition: int) -> tuple[str, str]:
    """(event field, wall field) of inventory's clock for one order-topic partition."""
    return f"stock_ms:{partition}", f"stock_wall_ms:{partition}"


def now_of(event_ms: int, wall_ms: int, *, wall_now_ms: int) -> int:
    """The room's time: its newest event time plus the wall time since that event came."""
    return event_ms + max(0, wall_now_ms - wall_ms)


# Each worker tells how far its order partitions are read once a second (Orders.sweep);
# a partition whose word is older than this has an owner down, stalled or in a rebalance.
# 3 s: three sweeps, so a loaded worker whose timer runs late is not taken for one down.
READ_STALE_MS = 3000


class Reading(NamedTuple):
    """A deployment's order-topic partitions as their owners last told (keys.orders_read)."""

    read_at: dict[int, int]
    """Partition -> wall ms when it was last read to its end."""
    applied_ms: dict[int, int]
    """Partition -> the newest order ts applied from it as of its owner's sweep before
    that one: a second of wall time old, so the levels of those orders are in the rooms'
    stock logs by then (the stock feed holds an update 100 ms at most)."""


def stale_until(reading: Reading, *, wall_ms: float, skip: Collection[int] = ()) -> int | None:
    """The least newest-applied order ts over the partitions not known to be read to their
    end (their owner's word is older than READ_STALE_MS), leaving out `skip`; None when
    every partition told of is. A partition never told of counts as read: a deployment
    of before, or none there yet."""
    read_at, applied_ms = reading
    return min((applied_ms.get(q, 0) for q in read_at.keys() | applied_ms.keys()
                if q not in skip and wall_ms - read_at.get(q, 0) > READ_STALE_MS),
               default=None)


def queue_reading(pipe: AnyPipeline, deployment: str, owned: Mapping[int, bool], *,
                  wall_ms: int, applied_ms: Mapping[int, int]) -> None:
    """Queue on `pipe` what this worker tells of its order-topic partitions (`owned`:
    partition -> read to its end now), then a read of every partition's; the last reply
    is the reading, for `parse_reading`. `applied_ms`: the newest order ts applied per
    partition, as of the sweep before. A partition behind with nothing applied yet says
    0 unless an owner of before said more: the levels its orders left are still known."""
    key = keys.orders_read(deployment)
    told: dict[str, int] = {str(p): wall_ms for p, done in owned.items() if done}
    told.update({f"ts:{p}": applied_ms[p] for p in owned if p in applied_ms})
    if told:  # redis-py's Mapping is invariant in its key: str is one of its types
        pipe.hset(key, mapping=told)  # type: ignore[arg-type]
    for p in owned:
        if p not in applied_ms and not owned[p]:
            pipe.hsetnx(key, f"ts:{p}", 0)
    pipe.hgetall(key)


def parse_reading(reply: Mapping[Any, Any]) -> Reading:
    """The reading, from the reply of `queue_reading`'s last command (an HGETALL)."""
    read_at: dict[int, int] = {}
    applied_ms: dict[int, int] = {}
    for raw, ms in reply.items():
        name = text(raw)
        if name.startswith("ts:"):
            applied_ms[int(name.removeprefix("ts:"))] = int(text(ms))
        else:
            read_at[int(name)] = int(text(ms))
    return Reading(read_at, applied_ms)


async def read_reading(redis: Client, deployment: str) -> Reading:
    """The reading alone (viewer engines judge stock by it)."""
    return parse_reading(await redis.hgetall(keys.orders_read(deployment)))


class RoomClocks:
    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._advance = redis.register_script(ADVANCE)

    async def advance(self, pipe: AnyPipeline, room_id: str, *, wall_ms: int,
                      room_ms: int | None = None, stock_ms: int | None = None,
                      partitions: Mapping[int, int] | None = None) -> None:
        """Queue on `pipe`, as one call, a forward move of the room's clocks: `room` to
        `room_ms`, `stock` to `stock_ms`, and each order-topic partition's inventory
        clock to its ms in `partitions` (the ones given; at least one must be)."""
        given: list[tuple[Clock, int | None]] = [("room", room_ms), ("stock", stock_ms)]
        moves = [(ms, _FIELDS[clock]) for clock, ms in given if ms is not None]
        moves += [(ms, partition_fields(p)) for p, ms in (partitions or {}).items()]
        if not moves:
            raise ValueError("advance: no clock to move")
        await scripts.call(self._advance, keys=[keys.clock(room_id)],
                           args=[wall_ms, *(x for ms, (event, wall) in moves
                                            for x in (ms, event, wall))], client=pipe)

    @staticmethod
    def queue_stock_ms(pipe: AnyPipeline, room_id: str) -> None:
        """Queue a read of the room's `stock` clock without wall time: the newest event ts
        its inventory has applied (a reply of bytes, or None before any)."""
        pipe.hget(keys.clock(room_id), _FIELDS["stock"][0])

    async def now(self, room_id: str, *, wall_now_ms: int,
                  clock: Clock = "room") -> int | None:
        """The room's time now on `clock`, or None before its first event."""
        event_ms, wall_ms = await self._redis.hmget(keys.clock(room_id), *_FIELDS[clock])
        if event_ms is None or wall_ms is None:
            return None
        return now_of(int(event_ms), int(wall_ms), wall_now_ms=wall_now_ms)

    async def partition_nows(self, room_id: str, *, wall_now_ms: int) -> dict[int, int]:
        """Partition -> the room's time now on that partition's inventory clock, for every
        partition that has applied an order of the room."""
        return (await self.inventory_nows([room_id], wall_now_ms=wall_now_ms))[room_id][0]

    async def inventory_nows(self, rooms: Sequence[str], *, wall_now_ms: int,
                             read: Mapping[int, int] | None = None,
                             until_ms: int | None = None,
                             ) -> dict[str, tuple[dict[int, int], int | None]]:
        """Per room, in one round trip: (its partitions' inventory clocks now, as
        `partition_nows`; its `stock` clock now, or None before its first event).

        With `read` (partition -> wall ms it was last read to its end, `Reading.read_at`),
        a partition's clock moves on by wall time only up to its mark, and not at all
        without one. With `until_ms` (the newest order applied on the partitions not read
        to their end, `stale_until`), wall time moves no partition's clock past it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hgetall(keys.clock(room))
            replies = await pipe.execute()
        out: dict[str, tuple[dict[int, int], int | None]] = {}
        for room, reply in zip(rooms, replies, strict=True):
            fields = {text(k): text(v) for k, v in reply.items()}
            nows: dict[int, int] = {}
            for name, value in fields.items():
                if name.startswith("stock_ms:"):
                    partition = int(name.removeprefix("stock_ms:"))
                    wall = fields.get(partition_fields(partition)[1])
                    if wall is not None:
                        until = wall_now_ms if read is None else min(
                            wall_now_ms, read.get(partition, 0))
                        now = now_of(int(value), int(wall), wall_now_ms=until)
                        if until_ms is not None:  # the clock itself never goes back
                            now = max(int(value), min(now, until_ms))
                        nows[partition] = now
            event, wall = (fields.get(f) for f in _FIELDS["stock"])
            stock = None if event is None or wall is None else now_of(
                int(event), int(wall), wall_now_ms=wall_now_ms)
            out[room] = nows, stock
        return out
