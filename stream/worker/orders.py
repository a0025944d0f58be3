"""The worker's selling path: stock and order events to inventory scripts, results out.

Per batch and room, one script call applies up to 500 operations in order (a `placed`
before its `paid` in the same batch still works); one pipeline carries every room's
calls, so a batch costs one Redis round trip however many orders it holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from stream.core.batch import Part, Record, SendMany, newest_by_room
from stream.core.codec import encode
from stream.core.models import OrderEvent, OrderResult, StockSet, StockUpdate
from stream.core.topics import Topics, partition_for
from stream.engine.stock import StockBook
from stream.store import keys, scripts
from stream.store.clocks import RoomClocks, parse_reading, queue_reading, stale_until
from stream.store.connect import Client
from stream.store.inventory import LEGACY, Inventory, Outcome, parse, unpack
from stream.store.ledger import Ledger
from stream.store.replies import text
from stream.store.roomlog import RoomLog
from stream.worker.orderhold import Held, drop, first_held, take
from stream.worker.stockfeed import StockFeed


class Orders:
    """Handler for the pipeline: applies stock.set and order.* events, exactly once each."""

    def __init__(self, *, redis: Client, inventory: Inventory, feed: StockFeed, send: SendMany,
                 topics: Topics, partitions: int, clock: Callable[[], float] = time.time,
                 stock: StockBook | None = None, rooms: RoomLog | None = None,
                 behind: Callable[[], Iterable[int]] = tuple) -> None:
        self._redis = redis
        # This worker's order partitions still behind: a backlog's orders past them wait
        # (stream/worker/orderhold.py); without, none ever waits.
        self._behind = behind
        self._held = Held()
        # One take of the held state at a time: the sweep (handle([])) and a revoke's
        # release run beside the batches, and two takes of the same state, each writing
        # its own after, lost the records the other held (exp-40x-o5's place, whose pay
        # then came out unknown_order in tests/scenarios/test_expiry.py).
        self._holding = asyncio.Lock()
        self._ledger = Ledger(redis)
        self._partitions = partitions
        # This worker's engines learn its own orders' levels at once, uncoalesced; other
        # workers' come through the room's stock log. Under a backlog the feed's 100 ms
        # of wall time is many seconds of show, past the timers' 3 s grace.
        self._stock = stock
        self._books = rooms  # each broadcast's outcomes on its own books
        self._inventory = inventory
        self._feed = feed
        self._send = send
        self._topics = topics
        self._clocks = RoomClocks(redis)
        self._clock = clock
        self._rooms: set[str] = set()
        # Order-topic partition -> the newest order ts applied from it (every room), now
        # and as of the last sweep: the sweep tells the one of the sweep before.
        self._applied_ms: dict[int, int] = {}
        self._applied_at_sweep: dict[int, int] = {}

    async def handle(self, parts: Sequence[Part]) -> None:
        orders = self._topics.order_events
        async with self._holding:
            now, after = take(self._held, [p for p in parts if p.record.topic == orders],
                              self._behind())
            # Before this take is acked (faust's commit) or the engine's fence passes it.
            await self._ledger.hold_back({f"{orders}:{p}": offset - 1
                                          for p, offset in first_held(after).items()})
            await self._apply([*(p for p in parts if p.record.topic != orders), *now])
            self._held = after  # only once applied: a retried call takes the same again

    def held_partitions(self) -> list[int]:
        return list(self._held.parts)

    async def release(self, partitions: Iterable[int]) -> None:
        """Apply now what waits on `partitions` (revoked, or the worker stops), whatever
        the partitions behind: their next owner starts after what the engine has."""
        gone = set(partitions)
        async with self._holding:
            await self._apply([part for p, queue in self._held.parts.items() if p in gone
                               for part in queue])
            self._held = drop(self._held, gone)

    def unapplied_from(self) -> float:
        """The oldest event ts of the orders waiting (inf if none): the viewer engines
        judge stock no further (Engagement._stock_until). During a take, the state
        before it: what it applies is not in the stock book yet either."""
        return min((e.ts for queue in self._held.parts.values() for part in queue
                    for e in part.events), default=float("inf"))

    def held_from(self) -> dict[tuple[str, int], int]:
        """(order topic, partition) -> the offset of its first record still waiting: the
        pipeline marks nothing consumed from there on, so a crash reads them again."""
        return {(self._topics.order_events, p): offset
                for p, offset in first_held(self._held).items()}

    async def _apply(self, parts: Sequence[Part]) -> None:
        # Each call's own results (the sweep runs beside the batches): a retried call
        # starts again, and nothing of the failed try is sent.
        out: Results = {}
        runs: dict[str, dict[tuple[str, int], list[tuple[Record, StockSet | OrderEvent]]]] = {}
        latest = newest_by_room(parts)
        for part in parts:
            # Only the host and order topics hold what inventory applies.
            if part.record.topic in (self._topics.host_events, self._topics.order_events):
                tp = (part.record.topic, part.record.partition)
                for e in part.events:
                    if isinstance(e, StockSet | OrderEvent):
                        runs.setdefault(e.room_id, {}).setdefault(tp, []).append(
                            (part.record, e))
        if not latest:
            return
        by_room = {room: _merged(list(found.values())) for room, found in runs.items()}
        # Each order-topic partition's newest ts in the call, per room: its own clock.
        newest = {room: {tp[1]: max(e.ts for _, e in run) for tp, run in found.items()
                         if tp[0] == self._topics.order_events}
                  for room, found in runs.items()}
        walks = await self._inventory.walk({room: [e for _, e in group]
                                            for room, group in by_room.items()})
        if self._books is not None:
            await self._books.refresh(by_room, since=min(part.record.taken for part in parts))
        wall_ms = int(self._clock() * 1000)
        new_rooms = [r for r in by_room if r not in self._rooms]
        async with self._redis.pipeline(transaction=False) as pipe:
            clocked = list(dict.fromkeys([*latest, *by_room]))
            for room in clocked:
                group = by_room.get(room)
                await self._clocks.advance(
                    pipe, room, wall_ms=wall_ms, room_ms=latest.get(room),
                    stock_ms=None if group is None else max(e.ts for _, e in group),
                    partitions=newest.get(room))
            if new_rooms:
                pipe.sadd(keys.ROOMS, *new_rooms)
            calls = [sum([await self._inventory.queue(
                pipe, room, self._inventory.ops([e for _, e in run], walks,
                                                [r.partition for r, _ in run]), book=book)
                for book, run in self._by_book(room, group)])
                for room, group in by_room.items()]
            for room in by_room:  # after the scripts: it covers every change they saw
                self._clocks.queue_stock_ms(pipe, room)
            waits = self._inventory.queue_wait(pipe, list(by_room))
            answers = await scripts.execute(pipe)
        if waits:  # no result goes out before the replicas have what it says
            self._inventory.check_wait(answers[-waits:])
        scripted = len(clocked) + bool(new_rooms) + sum(calls)
        applied_to = {room: int(text(ms)) for room, ms in zip(
            by_room, answers[scripted:scripted + len(by_room)], strict=True)}
        for found in newest.values():
            for p, ms in found.items():
                self._applied_ms[p] = max(ms, self._applied_ms.get(p, ms))
        self._rooms.update(new_rooms)
        chunks = iter(answers[len(clocked) + bool(new_rooms):])
        for (room, group), n in zip(by_room.items(), calls, strict=True):
            flat = [ax for _ in range(n) for ax in unpack(next(chunks))]
            # A replay's answer carries the level now, not the one its event left: stamped
            # with its own (older) ts, its version, the newest, told the stock books that
            # level held from then on. A stock load the gateway had applied, read on the
            # host topic after a backlog's orders, said the show's closing level from its
            # start (`bench/viewer_engine.py`: 6,459 nudges where event time sends 1,313, in
            # 2 of 4 runs). Now it is stamped with the newest event ts the room's inventory
            # has applied, by which every change in that level was made.
            outcomes = [_restamped(parse(answer, room_id=room, ts=e.ts, expired=x),
                                   applied_to[room])
                        for (_, e), (answer, x) in zip(group, flat, strict=True)]
            for (record, e), outcome in zip(group, outcomes, strict=True):
                # What the event's ts expired first goes out first, as the sweeper's would.
                await self._expired(room, e.ts, outcome.expired, out)
                self._feed.offer(outcome.levels)
                self._observe(outcome.levels)
                if isinstance(e, OrderEvent):
                    _add(out, _result(e.order_id, room, e.ts, outcome, e.viewer_id),
                         record.partition)
            # Bucketed SKUs: their levels are the sums of the buckets, read after the moves.
            summed = await self._inventory.follow_events(
                room, [e for _, e in group], outcomes, walks, ts=max(e.ts for _, e in group),
                partitions=[r.partition for r, _ in group])
            self._feed.offer(summed)
            self._observe(summed)
        await self._send_results(out)
        await self._feed.flush()

    def _by_book(self, room: str, group: list[tuple[Record, StockSet | OrderEvent]],
                 ) -> list[tuple[int, list[tuple[Record, StockSet | OrderEvent]]]]:
        """The room's operations in order, cut where the book changes (runs, not groups:
        operations must reach the script in their order)."""
        if self._books is None:
            return [(0, group)]
        runs: list[tuple[int, list[tuple[Record, StockSet | OrderEvent]]]] = []
        for item in group:
            book = self._books.book_at(room, item[1].ts)
            if runs and runs[-1][0] == book:
                runs[-1][1].append(item)
            else:
                runs.append((book, [item]))
        return runs

    async def sweep(self, *, owned: Mapping[int, bool] | None = None) -> int:
        """Release reservations past their deadline, each partition's of each room on
        that partition's own clock. `owned`: this worker's order-topic partitions, each
        with whether it is read to its end now (every record the broker held applied).

        Inventory's clocks, not the room's: viewer events read ahead of the orders must not
        expire a reservation whose payment is still on the order topic. And one per
        partition: a partition read ahead of another must not expire the other's orders
        either. Every worker sweeps every partition (a release is idempotent), but a
        partition's clock moves on by wall time only up to when its owner last had read
        it to the end: a partition whose owner is down or behind keeps its reservations
        until its records are applied (their in-script expiry then runs on event time).
        The sweep also tells the other workers' viewer engines how far this one's orders
        are applied (clocks.Reading)."""
        if self._held.parts:  # the partitions behind may have caught up since the take
            await self.handle([])
        wall_ms = int(self._clock() * 1000)
        owned = owned or {}
        released = 0
        out: Results = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.smembers(keys.ROOMS)
            queue_reading(pipe, self._topics.prefix, owned, wall_ms=wall_ms,
                          applied_ms=self._applied_at_sweep)
            replies = await pipe.execute()
        self._applied_at_sweep = {p: self._applied_ms[p] for p in owned if p in self._applied_ms}
        rooms = [text(raw) for raw in replies[0]]
        reading = parse_reading(replies[-1])
        # Wall time expires nothing past the newest order applied on a partition not read
        # to its end, this worker's or another's: the unit a due reservation frees must
        # not go to an order that came before its deadline, still unread there. A worker
        # reading a backlog swept a partition read to its end on the wall (a show of 30
        # minutes ending now: its first quarter hour's reservations all due), and another
        # partition's earlier orders got those units (`bench/viewer_engine.py`: 838
        # orders reserved where event time reserves 848, once in 3 runs).
        others = stale_until(reading, wall_ms=wall_ms, skip=owned)
        behind = [max(self._applied_ms.get(q, 0), reading.applied_ms.get(q, 0))
                  for q, done in owned.items() if not done]
        until = min([*behind, *([] if others is None else [others])], default=None)
        clocks: list[tuple[str, int, int]] = []
        for room, (nows, stock_now) in (await self._clocks.inventory_nows(
                rooms, wall_now_ms=wall_ms, read=reading.read_at, until_ms=until)).items():
            clocks += [(room, partition, now) for partition, now in nows.items()]
            # The single zset of before, for a show running across the upgrade: on the
            # earliest of the partitions' clocks (the room's, before any of them moved).
            legacy = min(nows.values()) if nows else stock_now
            if legacy is not None:
                clocks.append((room, LEGACY, legacy))
        # One round trip for what is due on every clock (most are empty), not one per
        # partition and room: 8 partitions made 10 reads a room a second.
        for (room, partition, now), due_ids in zip(
                clocks, await self._inventory.due_ids(clocks), strict=True):
            if not due_ids:
                continue
            book = self._books.book_at(room, now) if self._books is not None else 0
            due, levels = await self._inventory.expire_and_follow(
                room, now_ms=now, partition=partition, book=book, due_ids=due_ids)
            self._feed.offer(levels)
            self._observe(levels)
            released += await self._expired(room, now, due, out)
        await self._send_results(out)
        await self._feed.flush()
        return released

    async def _expired(self, room: str, ts: int, due: Sequence[tuple[str, Outcome]],
                       out: Results) -> int:
        """Feed the levels of expiries and publish the fresh ones' results; how many."""
        released = 0
        for order_id, outcome in due:
            self._feed.offer(outcome.levels)
            self._observe(outcome.levels)
            if outcome.fresh:  # else paid or cancelled in the meantime
                # On the viewer's input partition, as the order's other results: its
                # events are keyed by viewer id with Kafka's default partitioner.
                partition = partition_for(outcome.viewer_id, self._partitions)
                _add(out, _result(order_id, room, ts, outcome, outcome.viewer_id), partition)
                released += 1
        return released

    def _observe(self, levels: Iterable[StockUpdate]) -> None:
        if self._stock is not None:
            for level in levels:
                self._stock.observe(level.room_id, level.sku, level.ts, level.available,
                                   level.version)

    async def _send_results(self, out: Results) -> None:
        # One batch per partition: ~1 us a record against ~8 us through a send() each
        # (6.7% of the worker's main thread at 6,000 orders/s went to sending one by one).
        # faust's commit flushes the producer, so no ack is awaited here.
        for partition, records in out.items():
            await self._send(self._topics.order_results, partition, records)


def _restamped(outcome: Outcome, ts: int) -> Outcome:
    """A replay's levels stamped with `ts`; a fresh outcome as it is."""
    if outcome.fresh or not outcome.levels:
        return outcome
    return dataclasses.replace(outcome, levels=tuple(
        msgspec.structs.replace(level, ts=ts) for level in outcome.levels))


Results = dict[int, list[tuple[bytes | None, bytes]]]
"""A call's order results: output partition -> (key, value) records, in the order made."""


def _merged(runs: list[list[tuple[Record, StockSet | OrderEvent]]],
            ) -> list[tuple[Record, StockSet | OrderEvent]]:
    """A room's operations of one call: each partition's in its own order, the partitions
    merged by event time. The script once expired, before each op, what its ts had passed
    in the whole room, and in record order a backlog read round-robin across partitions
    let one partition's late payment expire another's order whose payment_failed came
    later in the call (tests/scenarios/test_expiry.py at 100x under load). Expiry is per
    partition now; the merge stays so that the room's SKUs are taken and freed in event
    time within a call, nearer the sequential answers when stock runs short."""
    if len(runs) == 1:
        return runs[0]
    return list(heapq.merge(*runs, key=_event_ts))


def _event_ts(item: tuple[Record, StockSet | OrderEvent]) -> int:
    return item[1].ts


def _add(out: Results, result: OrderResult, partition: int) -> None:
    # The input's partition number: a viewer's results stay in order, no hashing.
    out.setdefault(partition, []).append((result.order_id.encode(), encode(result)))


def _result(order_id: str, room: str, ts: int, outcome: Outcome, viewer_id: str) -> OrderResult:
    return OrderResult(order_id=order_id, room_id=room, viewer_id=viewer_id,
                       status=outcome.status,  # type: ignore[arg-type]
                       reason=outcome.reason or None, ts=ts)
