"""Stock in Redis: every change is one atomic script, idempotent by order or event id.

Per SKU a hash holds `available`, `reserved`, `sold`, `loaded` and a `version` that
grows with every change (so readers can drop stale updates). At every moment
`available + reserved + sold == loaded`, where `loaded` is the sum of all stock.set
adjustments (the SPEC's "loaded + restocked").

All keys of a room carry the hash tag `{room}`; the scripts derive SKU keys from the
room prefix, which stays inside the slot of the declared keys on Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import ConnectionError as RedisConnectionError

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
from stream.store.applyscript import APPLY
from stream.store.buckets import Buckets, Walk, counts
from stream.store.connect import AnyPipeline, Client
from stream.store.replies import text
from stream.store.stockread import StockReader

# Orders are kept this long after their last change, for late payments and the review.
ORDER_RETENTION_S = 7 * 24 * 3600
# Ops per script call: long enough to amortise the call, short enough not to stall Redis.
CHUNK = 500

Op = list[object]

# Where an order op keeps the partition of its record on the order topic (0-based), the
# one whose deadlines zset it adds to, removes from and expires (applyscript.APPLY).
PARTITION_AT = {"place": 8, "pay": 5, "release": 5, "settle": 2}
# The "partition" of the room's single deadlines zset of before the per-partition ones
# (keys.legacy_deadlines): only the sweeper's releases and settles name it.
LEGACY = -1


def deadlines_key(room_id: str, partition: int) -> str:
    """The deadlines zset of one order-topic partition of the room (or the legacy one)."""
    if partition == LEGACY:
        return keys.legacy_deadlines(room_id)
    return keys.deadlines(room_id, partition)


def partitions_of(ops: Sequence[Op]) -> list[int]:
    """The partitions whose deadlines zsets `ops` touch, in order of first use."""
    found: dict[int, None] = {}
    for op in ops:
        at = PARTITION_AT.get(str(op[0]))
        if at is not None:
            partition = op[at]
            assert isinstance(partition, int), op
            found[partition] = None
    return list(found)


def apply_keys(room_id: str, partitions: Sequence[int], *, book: int = 0) -> list[str]:
    """APPLY's KEYS for a call whose ops touch the deadlines of `partitions` (its ARGV[6]
    lists them in the same order): every key of the call declared, as a cluster needs,
    all in the room's slot."""
    return [keys.stats(room_id, book), keys.skus(room_id), keys.stock_sets(room_id),
            keys.buyers(room_id, book), keys.spend(room_id, book), keys.seconds(room_id, book),
            keys.bucketed(room_id), keys.book_orders(room_id, book),
            *(deadlines_key(room_id, p) for p in partitions)]


@dataclass(frozen=True, slots=True)
class Move:
    """What an answer asks of a bucketed SKU: `set` its n buckets, or `sell`/`free` what
    the order took from the listed buckets."""

    sku: str
    action: str
    arg: str  # the bucket count (set) or the buckets, `0,3` (sell, free)

    def buckets(self) -> list[int]:
        return [int(b) for b in self.arg.split(",") if b]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one operation did: `fresh` is False for a replay, which changed nothing."""

    fresh: bool
    status: str
    reason: str
    viewer_id: str
    levels: tuple[StockUpdate, ...]
    moves: tuple[Move, ...] = ()
    # The reservations this op's event ts expired first, (order_id, outcome) by deadline:
    # their results go out before this op's own.
    expired: tuple[tuple[str, Outcome], ...] = ()


Answer = Sequence[bytes | str | int | None]


def unpack(reply: Sequence[Sequence[Answer]]) -> list[tuple[Answer, list[tuple[str, Answer]]]]:
    """One script call's reply {answers, expired}: per op, its answer and the (order_id,
    answer) of each reservation it expired first."""
    ops, expired = reply
    before: list[list[tuple[str, Answer]]] = [[] for _ in ops]
    for e in expired:
        before[int(e[0] or 0) - 1].append((text(e[1] or ""), e[2:]))
    return list(zip(ops, before, strict=True))


def parse(answer: Answer, *, room_id: str, ts: int,
          expired: Sequence[tuple[str, Answer]] = ()) -> Outcome:
    """Decode one op's flat answer: fresh, status, reason, viewer, then 5 fields per SKU
    (a bucket move where the SKU starts with `#`, which no SKU id can); `expired`, the
    answers of the reservations it expired first, stamped with the op's ts."""
    text = [a.decode() if isinstance(a, bytes) else a for a in answer]
    levels: list[StockUpdate] = []
    moves: list[Move] = []
    for i in range(4, len(text), 5):
        sku = str(text[i])
        if sku.startswith("#"):
            moves.append(Move(sku=sku[1:], action=str(text[i + 2]), arg=str(text[i + 1])))
            continue
        levels.append(StockUpdate(room_id=room_id, sku=sku, available=int(text[i + 1] or 0),
                                  reserved=int(text[i + 2] or 0), sold=int(text[i + 3] or 0),
                                  version=int(text[i + 4] or 0), ts=ts))
    return Outcome(text[0] == "new", str(text[1]), str(text[2] or ""), str(text[3] or ""),
                   tuple(levels), tuple(moves),
                   tuple((oid, parse(a, room_id=room_id, ts=ts)) for oid, a in expired))


def walks_for(event: OrderPlaced, split: dict[str, int], *, max_qty: int) -> list[Walk]:
    """The order's lines on bucketed SKUs, to take from their buckets (a line over the
    limit walks nowhere: the script refuses it)."""
    return [Walk(order_id=event.order_id, sku=i.sku, need=i.qty, n=split[i.sku],
                 visited=0 if i.qty <= max_qty else split[i.sku])
            for i in event.items if i.sku in split]


# How long a batch waits for its replicas (WAIT) before it fails as transient and is
# retried: a replica on the same network acks in well under a millisecond; 1 s rides
# out a replica's hiccup without holding the room's next batch much longer.
WAIT_TIMEOUT_MS = 1_000


class ReplicasBehind(RedisConnectionError):
    """WAIT returned before enough replicas had the batch's writes: retry the batch (its
    operations are idempotent, and no result of it has gone out yet)."""


class Inventory:
    """Turns events into script operations and runs them, a room and a chunk per call.

    With `wait_replicas` N, every batch of scripts is followed by `WAIT N` on each node it
    wrote to, and fails (`ReplicasBehind`, transient) unless N replicas have its writes,
    so no order result leaves before a failover could keep it (see README: failover).
    """

    def __init__(self, redis: Client, *, reservation_ttl_ms: int = 15 * 60_000,
                 max_qty_per_line: int = 10, wait_replicas: int = 0) -> None:
        self.redis = redis
        self.reservation_ttl_ms = reservation_ttl_ms
        self.max_qty_per_line = max_qty_per_line
        self.wait_replicas = wait_replicas
        self._apply = redis.register_script(APPLY)
        self.buckets = Buckets(redis, retention_s=ORDER_RETENTION_S)

    def queue_wait(self, pipe: AnyPipeline, rooms: Sequence[str]) -> int:
        """Queue `WAIT` after the rooms' scripts on `pipe` (one per node on a cluster: WAIT
        covers what its own connection wrote); returns how many answers it added."""
        if not self.wait_replicas or not rooms:
            return 0
        if isinstance(pipe, ClusterPipeline):
            found = (pipe.cluster_client.get_node_from_key(keys.stats(r)) for r in rooms)
            nodes = {node.name: node for node in found if node is not None}
            for node in nodes.values():
                pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS,
                                     target_nodes=node)
            return len(nodes)
        pipe.execute_command("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
        return 1

    def check_wait(self, answers: Sequence[object]) -> None:
        """Raise `ReplicasBehind` unless every WAIT answer reached `wait_replicas`."""
        for acked in answers:
            if int(acked) < self.wait_replicas:  # type: ignore[call-overload]
                raise ReplicasBehind(f"WAIT: {acked} of {self.wait_replicas} replicas had "
                                     f"the batch within {WAIT_TIMEOUT_MS} ms; retrying it")

    def op(self, event: StockSet | OrderEvent, *, taken: dict[str, str] | None = None,
           partition: int = 0) -> Op:
        """The script operation for one event (pure); the event's minute and second key
        the host's view counts of its outcome. `taken`: sku -> the buckets a bucketed
        line took from (`Walk.text`). `partition`: the order event's record partition on
        the order topic, whose deadlines it uses (a `stock.set` has none)."""
        if isinstance(event, StockSet):
            return ["set", event.event_id, event.sku, event.qty, event.name or "",
                    "" if event.price is None else str(event.price),
                    "" if event.buckets is None else str(event.buckets)]
        if isinstance(event, OrderPlaced):
            taken = taken or {}
            return ["place", event.order_id, event.viewer_id,
                    str(event.ts + self.reservation_ttl_ms),
                    [[i.sku, i.qty, i.price, taken[i.sku]] if i.sku in taken
                     else [i.sku, i.qty, i.price] for i in event.items],
                    str(minute_of(event.ts)), str(event.ts // 1000), str(event.ts), partition]
        if isinstance(event, OrderPaid):
            return ["pay", event.order_id, str(minute_of(event.ts)), str(event.ts // 1000),
                    str(event.ts), partition]
        if isinstance(event, OrderCancelled):
            return ["release", event.order_id, "cancelled", "", str(event.ts), partition]
        if isinstance(event, OrderPaymentFailed):
            return ["release", event.order_id, "payment_failed", "", str(event.ts), partition]
        raise TypeError(f"not an inventory event: {event!r}")  # pragma: no cover

    async def queue(self, pipe: AnyPipeline, room_id: str, ops: Sequence[Op], *,
                    book: int = 0) -> int:
        """Queue `ops` for one room on `pipe`, their outcomes counted on the books of the
        room's broadcast `book`; returns how many calls (answers) it added."""
        calls = 0
        for lo in range(0, len(ops), CHUNK):
            chunk = ops[lo:lo + CHUNK]
            partitions = partitions_of(chunk)
            await scripts.call(
                self._apply, keys=apply_keys(room_id, partitions, book=book),
                args=[keys.stock_prefix(room_id), keys.order_prefix(room_id),
                      ORDER_RETENTION_S, self.max_qty_per_line, orjson.dumps(chunk),
                      orjson.dumps(partitions)],
                client=pipe)
            calls += 1
        return calls

    async def run(self, room_id: str, ops: Sequence[Op], *, ts: int,
                  book: int = 0) -> list[Outcome]:
        """Apply `ops` now and return one Outcome per op."""
        async with self.redis.pipeline(transaction=False) as pipe:
            calls = await self.queue(pipe, room_id, ops, book=book)
            waits = self.queue_wait(pipe, [room_id])
            answers = await scripts.execute(pipe)
        self.check_wait(answers[calls:calls + waits])
        return [parse(a, room_id=room_id, ts=ts, expired=x)
                for reply in answers[:calls] for a, x in unpack(reply)]

    async def load(self, events: Sequence[StockSet]) -> None:
        """Apply stock loads now, a room per script call (idempotent by event id).

        The gateway calls this before it answers 202, so anything sent after the answer
        (an order) finds the stock in Redis, whichever topic a worker reads first; the
        worker's own apply of the same event later is a replay and changes nothing.
        """
        by_room: dict[str, list[StockSet]] = {}
        for event in events:
            by_room.setdefault(event.room_id, []).append(event)
        for room, group in by_room.items():
            await self.apply(room, group, ts=0)

    async def walk(self, by_room: dict[str, list[StockSet | OrderEvent]]
                   ) -> dict[int, list[Walk]]:
        """Take the units of lines on bucketed SKUs from their buckets, before the room's
        script records the orders: one read of the rooms' bucketed SKUs when there are
        orders, and a round trip per step of the walk only when some SKU is bucketed.
        Keyed by id() of the event (its list of items makes it unhashable)."""
        placing = [room for room, events in by_room.items()
                   if any(isinstance(e, OrderPlaced) for e in events)]
        split = await counts(self.redis, placing) if placing else {}
        walks: dict[int, list[Walk]] = {}
        for room, skus in split.items():
            if not skus:
                continue
            mine = {id(e): found for e in by_room[room] if isinstance(e, OrderPlaced)
                    and (found := walks_for(e, skus, max_qty=self.max_qty_per_line))}
            await self.buckets.walk(room, [w for ws in mine.values() for w in ws])
            walks.update(mine)
        return walks

    def ops(self, events: Sequence[StockSet | OrderEvent], walks: dict[int, list[Walk]],
            partitions: Sequence[int]) -> list[Op]:
        """The script operations for events whose bucketed lines have walked; `partitions`,
        each event's record partition."""
        return [self.op(e, taken={w.sku: w.text() for w in walks.get(id(e), ())}, partition=p)
                for e, p in zip(events, partitions, strict=True)]

    async def follow_events(self, room_id: str, events: Sequence[StockSet | OrderEvent],
                            outcomes: Sequence[Outcome], walks: dict[int, list[Walk]], *,
                            ts: int, partitions: Sequence[int]) -> list[StockUpdate]:
        """The bucket loads, sells and frees the room's answers to `events` ask for (nothing
        to do when no SKU of the room is bucketed); the summed levels of what moved.
        `partitions`: each event's record partition, as given to `ops`."""
        settle_in = {e.order_id: p for e, p in zip(events, partitions, strict=True)
                     if isinstance(e, OrderEvent)}
        moves: list[tuple[str, Move]] = []
        frees: list[tuple[str, str, list[int]]] = []
        walked: list[Walk] = []
        for e, outcome in zip(events, outcomes, strict=True):
            if isinstance(e, OrderEvent):
                moves += [(e.order_id, m) for m in outcome.moves if m.action != "hold"]
            if id(e) in walks:
                # What the walk took and the order does not hold goes back: all of it when
                # refused, the extra takes of a replay whose lines differ from the first.
                held = {(m.sku, b) for m in outcome.moves for b in m.buckets()}
                for w in walks[id(e)]:
                    walked.append(w)
                    if extra := [b for b in w.buckets if (w.sku, b) not in held]:
                        frees.append((w.order_id, w.sku, extra))
        sets = loads([e for e in events if isinstance(e, StockSet)],
                     [o for e, o in zip(events, outcomes, strict=True)
                      if isinstance(e, StockSet)])
        return await self.follow(room_id, ts=ts, loads=sets, moves=moves, frees=frees,
                                 walked=walked, partitions=settle_in)

    async def apply(self, room_id: str, events: Sequence[StockSet | OrderEvent], *,
                    ts: int, book: int = 0, partitions: Sequence[int] | None = None,
                    ) -> tuple[list[Outcome], list[StockUpdate]]:
        """Walk, run and follow `events` of one room, as the worker does a batch:
        (an outcome per event, the summed levels of bucketed SKUs that moved).
        `partitions`: each event's record partition (all 0 when None)."""
        where = partitions if partitions is not None else [0] * len(events)
        walks = await self.walk({room_id: list(events)})
        outcomes = await self.run(room_id, self.ops(events, walks, where), ts=ts, book=book)
        return outcomes, await self.follow_events(room_id, events, outcomes, walks, ts=ts,
                                                  partitions=where)

    async def follow(self, room_id: str, *, ts: int,
                     loads: Sequence[tuple[str, str, int, int]] = (),
                     moves: Sequence[tuple[str, Move]] = (),
                     frees: Sequence[tuple[str, str, list[int]]] = (),
                     walked: Sequence[Walk] = (), book: int = 0,
                     partitions: Mapping[str, int] | None = None,
                     ) -> list[StockUpdate]:
        """What the room's answers ask of bucketed SKUs: their loads, the sells and frees
        of (order_id, move), and (order_id, sku, buckets) to give back that walks took
        for orders that do not hold them; then the orders moved give up their deadline,
        in the zset of their partition (`partitions`: order_id -> partition; all 0 when
        None). Returns the summed levels of the SKUs touched. Each step is idempotent, so
        a step cut short is redone by a replay."""
        if not (loads or moves or frees or walked):
            return []
        await self.buckets.load(room_id, loads)
        await self.buckets.settle(room_id, [
            *((oid, m.sku, m.action, m.buckets()) for oid, m in moves),
            *((order_id, sku, "free", buckets) for order_id, sku, buckets in frees)])
        settled = sorted({oid for oid, _ in moves})
        if settled:
            where = partitions if partitions is not None else dict.fromkeys(settled, 0)
            await self.run(room_id, [["settle", oid, where[oid]] for oid in settled], ts=ts,
                           book=book)
        touched = ({sku for _, sku, _, _ in loads} | {m.sku for _, m in moves}
                   | {w.sku for w in walked})
        split = (await counts(self.redis, [room_id])).get(room_id, {})
        return await self.buckets.levels(
            room_id, {sku: split[sku] for sku in sorted(touched) if sku in split}, ts=ts)

    async def due_ids(self, clocks: Sequence[tuple[str, int, int]], *, limit: int = 500,
                      ) -> list[list[str]]:
        """For each (room, partition or LEGACY, now ms), in one round trip: the ids of its
        deadlines zset due by then (at most `limit`), for `expire_due`'s `due_ids`."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for room_id, partition, now_ms in clocks:
                pipe.zrangebyscore(deadlines_key(room_id, partition), "-inf", now_ms,
                                   start=0, num=limit)
            replies = await pipe.execute()
        return [[text(d) for d in reply] for reply in replies]

    async def expire_due(self, room_id: str, *, now_ms: int, partition: int = 0,
                         limit: int = 500, book: int = 0, due_ids: Sequence[str] | None = None,
                         ) -> list[tuple[str, Outcome]]:
        """Release reservations of one partition (or LEGACY) whose deadline has passed on
        that partition's clock, `now_ms` (`due_ids`: theirs, when `due_ids` read them).

        Returns (order_id, outcome) per due order; an outcome that is not fresh means
        the order was paid or cancelled first and nothing changed.
        """
        due = due_ids
        if due is None:
            [due] = await self.due_ids([(room_id, partition, now_ms)], limit=limit)
        if not due:
            return []
        outcomes = await self.run(room_id, [["release", oid, "expired", str(now_ms), "",
                                             partition] for oid in due], ts=now_ms, book=book)
        return list(zip(due, outcomes, strict=True))

    async def expire_and_follow(self, room_id: str, *, now_ms: int, partition: int = 0,
                                limit: int = 500, book: int = 0,
                                due_ids: Sequence[str] | None = None,
                                ) -> tuple[list[tuple[str, Outcome]], list[StockUpdate]]:
        """`expire_due`, then what it asks of bucketed SKUs: (due, summed levels)."""
        due = await self.expire_due(room_id, now_ms=now_ms, partition=partition,
                                    limit=limit, book=book, due_ids=due_ids)
        levels = await self.follow(room_id, ts=now_ms, book=book, moves=[
            (oid, m) for oid, outcome in due for m in outcome.moves],
            partitions={oid: partition for oid, _ in due})
        return due, levels

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


def loads(events: Sequence[StockSet], outcomes: Sequence[Outcome]
          ) -> list[tuple[str, str, int, int]]:
    """(event_id, sku, qty, buckets) for the loads whose answer asks to set buckets (on a
    replay too: each bucket applies an event id once)."""
    return [(e.event_id, e.sku, e.qty, int(m.arg))
            for e, o in zip(events, outcomes, strict=True) for m in o.moves if m.action == "set"]


@dataclass(slots=True)
class Audit:
    room_id: str
    skus: int
    oversold: int = 0
    problems: list[str] = field(default_factory=list)
