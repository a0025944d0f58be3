"""The worker's viewer path: one ViewerEngine per input partition, its state in Redis,
and every effect (nudge, tag, follow-up) delivered once.

- State: every second the changed viewers and the partition's offsets are saved
  in one script (same `{vs:p}` slot), so a restarted or rebalanced worker loads them,
  starts reading after those offsets and re-decides what came later.
- Effects: the engine decides; Redis makes it once (`delivery`: claimed in numbered
  rounds, published, marked done once Kafka acked). Delivery runs behind the engine, so
  the next batch is judged while Redis claims this one's effects.
- Time: each partition's clock is its newest event time plus the wall time since, so
  a due nudge fires in a silent room and a replay at 100x fires what real time did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter

from stream.core.batch import Part, SendMany
from stream.core.models import ViewerEvent
from stream.core.topics import Topics
from stream.engine.effects import Effect
from stream.engine.reorder import Reorder
from stream.engine.rules import Rules
from stream.engine.state import PRESENCE_TIMEOUT_MS
from stream.engine.viewers import ViewerEngine
from stream.store import scripts
from stream.store.clocks import Reading, now_of, read_reading, stale_until
from stream.store.connect import Client
from stream.store.roomlog import RoomLog
from stream.store.viewerstate import ViewerStates
from stream.worker.delivery import Delivery

# Acks, done marks and the state are settled this often (and on every tick), not per
# batch: a batch then never waits on Kafka's acks, and a viewer touched many times in
# the window is encoded and saved once. A worker killed meanwhile loses nothing: its
# successor starts at the saved fence and the once-keys drop what was already sent.
SETTLE_EVERY_S = 1.0
# Timers wait this long past their due time before firing: a viewer's order travels on
# another topic than their views and may arrive a little behind them; without the wait
# an order placed just before the 3-minute mark could still trigger the reminder.
GRACE_MS = 3000
# The order topic may also be *written* ahead of the viewer topic (two backends, two
# writers): a worker that has read all there is of the viewer topic would let an order
# through whose time fires timers that views still on their way cancel. So while the
# order topic is ahead, the viewer topic counts as behind for up to this much wall time.
# One oracle run at 10x had order records written up to 7.2 s of show (0.72 s of wall)
# ahead of later viewer records; 2 s covers that, and delays only effects of orders that
# come while the viewer topic is quiet.
HOLD_ORDERS_S = 2.0
# A settle is one Redis round trip and the acks of at most a second of sends (a few
# milliseconds here); a revoke waits this long for it at most, so a Redis outage during
# a rebalance cannot hold up the group (its session timeout is 6 s).
CLOSE_SETTLE_S = 2.0

log = logging.getLogger(__name__)

class Engagement:
    """Pipeline handler for viewer and order events, plus the idle-time tick."""

    def __init__(self, *, redis: Client, rules: Callable[[], Rules], rooms: RoomLog,
                 send: SendMany,
                 topics: Topics, bootstrap: str,
                 behind: Callable[[str, int], bool] = lambda topic, partition: False,
                 generation: Callable[[], int] = lambda: 0,
                 unapplied: Callable[[], float] = lambda: float("inf"),
                 clock: Callable[[], float] = time.time, nudge_hold_s: int = 60,
                 presence_timeout_ms: int = PRESENCE_TIMEOUT_MS) -> None:
        self._redis = redis
        self._presence_timeout_ms = presence_timeout_ms
        self._rules = rules
        self._rooms = rooms
        self._clock = clock
        self._behind = behind
        # The oldest order the inventory has read but not applied (Orders.unapplied_from):
        # a backlog's envelope held whole waits with events older than what is read.
        self._unapplied = unapplied
        self._generation = generation
        self._inputs = (topics.viewer_events, topics.order_events)
        self._deployment = topics.prefix
        self._reading = Reading({}, {})  # the other workers' order partitions, each tick
        self._states = ViewerStates(redis, deployment=topics.prefix)
        self._delivery = Delivery(redis=redis, rooms=rooms, send=send, topics=topics,
                                  bootstrap=bootstrap, clock=clock, nudge_hold_s=nudge_hold_s)
        self.engines: dict[int, ViewerEngine] = {}
        # Records dropped as of an older generation (a rebalance began while their batch
        # was in the pipeline): the new owner re-reads them (the resume offsets).
        self.stale = 0
        self._fences: dict[int, dict[str, int]] = {}
        self._waiting: dict[int, Reorder[ViewerEvent]] = {}
        self._ahead_since: dict[int, float] = {}  # partition -> when orders got ahead
        self._epoch = 0  # moves on every revoke: a load that spans one is stale
        # partition -> room -> (newest event ms, wall s it was seen): each room's own clock,
        # so one show's later events never fire another's timers.
        self._times: dict[int, dict[str, tuple[int, float]]] = {}
        # Offsets whose effects are in the state, for the next settle to save; the states
        # a failed save left unsaved (kept until saved: the engine has moved on).
        self._moved: dict[int, dict[str, int]] = {}
        self._settle_at = 0.0
        self._unsaved: dict[int, dict[tuple[str, str], bytes]] = {}
        self._lock = asyncio.Lock()  # the agent and the tick share the engines

    async def handle(self, parts: Sequence[Part]) -> None:
        generation = self._generation()
        # The pipeline keeps each event on its own topic: these hold viewer events only.
        ours = [part for part in parts if part.record.topic in self._inputs]
        mine = [part for part in ours if part.record.generation == generation]
        self.stale += len(ours) - len(mine)
        if not mine:
            return
        async with self._lock:
            partitions = {part.record.partition for part in mine}
            await self._load(partitions)
            # One read of the host log per take() batch, not per piece of it.
            await self._rooms.refresh(frozenset().union(*(part.rooms for part in mine)),
                                      since=min(part.record.taken for part in mine))
            for part in mine:
                p, topic, offset = part.record.partition, part.record.topic, part.record.offset
                waiting = self._waiting.get(p)
                if waiting is None:
                    continue  # revoked while this batch waited: its new owner re-reads it
                if offset <= max(self._fences[p].get(topic, -1), waiting.last(topic)):
                    continue  # already in the saved state (a redelivery) or waiting
                waiting.add(topic, offset, part.events)  # type: ignore[arg-type]
            await self._run(partitions)

    async def tick(self) -> int:
        """Fire what is due on wall time in quiet partitions, and settle; returns effects
        decided."""
        async with self._lock:
            if not self.engines:
                return 0
            # Before the stock logs: what it says is applied is in them by then.
            self._reading = await read_reading(self._redis, self._deployment)
            await self._rooms.refresh(self._rooms.rooms)
            return await self._run(set(self.engines), settle=True)

    async def _run(self, partitions: set[int], *, settle: bool = False) -> int:
        """Apply what the reorder lets through, fire what is due, start delivering; settle
        when due. Returns how many effects were decided."""
        self._delivery.check(self.engines.keys())
        rules = self._rules()
        effects: list[tuple[int, Effect]] = []
        stock_until = self._stock_until()
        for p in sorted(partitions & self.engines.keys()):
            engine, waiting = self.engines[p], self._waiting[p]
            if engine.rules is not rules:
                engine.rules = rules
            behind = {t for t in self._inputs if self._behind(t, p)} | self._held(p, waiting)
            released = waiting.release(behind, until=stock_until)
            if released:
                effects += [(p, e) for e in engine.apply_all(released, self._rooms.get)]
                self._observe(p, released)
            fences = self._fences[p]
            moved = {t: o for t, o in waiting.fences().items() if o > fences.get(t, -1)}
            if moved:
                self._moved.setdefault(p, {}).update(moved)
            if p in self._times:
                now = self._now(p, behind, waiting, until=stock_until)
                effects += [(p, e) for e in engine.advance(now, self._rooms.rooms)]
        self._delivery.add(effects)
        if settle or self._clock() >= self._settle_at:
            await self._settle()
            self._settle_at = self._clock() + SETTLE_EVERY_S
        return len(effects)

    async def _settle(self) -> None:
        """Wait for the Kafka acks since the last settle, mark those effects done, save the state.

        In this order: state saved before the acks could skip a lost effect on replay.
        """
        await self._delivery.settle(self.engines.keys())
        await self._persist(set(self.engines), self._moved)
        self._moved = {}

    async def saved_fences(self, partitions: Iterable[int]) -> dict[int, dict[str, int]]:
        """Each partition's saved offsets: where its viewer state is up to, per topic."""
        return await self._states.saved_fences(partitions)

    async def adopt(self, partitions: Iterable[int]) -> None:
        """Load newly assigned partitions now, not at their first record.

        A partition with nothing left to re-read (its state saved up to its end, as a
        revoke saves it) got no record, so no engine and no room clock: its rooms' due
        timers and the end of the show never fired (259 of 800 follow-ups in a fault run
        whose rebalances came at the show's end). Each room's clock starts at the newest
        event time the partition's states hold, and moves on with the wall from now.
        """
        async with self._lock:
            mine = set(partitions)
            await self._load(mine)
            rooms: set[str] = set()
            wall = self._clock()
            for p in sorted(mine & self.engines.keys()):
                if p not in self._times:
                    newest = self.engines[p].newest()
                    self._times[p] = {room: (ts, wall) for room, ts in newest.items()}
                    rooms |= newest.keys()
            await self._rooms.refresh(rooms)

    async def close(self, partitions: Iterable[int] = (), *,
                    timeout_s: float = CLOSE_SETTLE_S) -> None:
        """Settle what was decided (acks, done marks, the state), then forget `partitions`:
        at a revoke (those given away) and at a clean stop (none: the process ends).

        Without the settle, the last second's state was dropped while its effects were on
        Kafka: the viewer's held tags lacked the end-of-show `drop_off` when the worker
        stopped within a second of deciding it. Bounded: with Redis or Kafka away the
        partitions are forgotten unsettled, as before, and the next owner replays them
        from the saved fence (their effects are claimed, so none goes out twice).
        """
        try:
            async with asyncio.timeout(timeout_s), self._lock:
                await self._settle()
        except Exception as exc:  # any failure: the replay does it, as before
            log.warning("could not settle before giving up partitions (%s: %s); their next "
                        "owner replays them from the saved state", type(exc).__name__, exc)
        self.forget(partitions)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns (their new owner loads the state)."""
        self._epoch += 1
        gone = set(partitions)
        for p in gone:
            self.engines.pop(p, None)
            self._waiting.pop(p, None)
            self._ahead_since.pop(p, None)
            self._fences.pop(p, None)
            self._times.pop(p, None)
            # Offsets applied to the dropped state must not be saved later: if the
            # partition comes back, they would fence off events its state never saw.
            self._moved.pop(p, None)
            self._unsaved.pop(p, None)
        self._delivery.forget(gone)

    # --- state ------------------------------------------------------------------------

    async def _load(self, partitions: set[int]) -> None:
        missing = sorted(p for p in partitions if p not in self.engines)
        if not missing:
            return
        epoch = self._epoch
        saved = await self._states.load(missing)
        if epoch != self._epoch:
            return  # a rebalance meanwhile: these may not be ours, and get re-read if they are
        for p, (states, offsets) in zip(missing, saved, strict=True):
            engine = ViewerEngine(self._rules(), grace_ms=GRACE_MS, stock=self._rooms.stock,
                                  presence_timeout_ms=self._presence_timeout_ms)
            engine.restore(states)
            self.engines[p] = engine
            self._waiting[p] = Reorder(self._inputs, ts=_ts)
            self._fences[p] = offsets

    async def _persist(self, partitions: set[int], moved: dict[int, dict[str, int]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            queued: list[int] = []
            indexed: list[tuple[str, str]] = []
            for p in partitions:
                if p not in self.engines:
                    continue  # revoked since: its new owner replays from the saved fence
                blobs = self._unsaved.setdefault(p, {})
                blobs.update(self.engines[p].export_dirty())
                offsets = moved.get(p, {})
                if not blobs and not offsets:
                    continue
                indexed += await self._states.save(pipe, p, blobs, offsets)
                for topic, offset in offsets.items():
                    self._fences[p][topic] = offset
                queued.append(p)
            if queued:
                await scripts.execute(pipe)
        self._states.indexed(indexed)
        for p in queued:
            self._unsaved.pop(p, None)

    def _held(self, partition: int, waiting: Reorder[ViewerEvent]) -> set[str]:
        """{viewer topic} while the order topic is ahead of it, for up to HOLD_ORDERS_S."""
        views, orders = self._inputs
        if waiting.newest(orders) <= waiting.newest(views):
            self._ahead_since.pop(partition, None)
            return set()
        since = self._ahead_since.setdefault(partition, self._clock())
        return {views} if self._clock() - since < HOLD_ORDERS_S else set()

    def _observe(self, partition: int, released: Sequence[ViewerEvent]) -> None:
        """Each room's newest event time (they leave in ts order: the last per room)."""
        times = self._times.setdefault(partition, {})
        newest = {e.room_id: e.ts for e in released}
        wall = self._clock()
        for room, ts in newest.items():
            seen = times.get(room)
            if seen is None or ts > seen[0]:
                times[room] = (ts, wall)

    def _stock_until(self) -> float:
        """How far any partition's timers may run for the stock levels they judge by: up
        to the newest order read (and so applied: the inventory handles each batch
        first) on every order-topic partition of this worker's that is still behind, to
        the oldest the inventory holds unapplied (stream/worker/orderhold.py), and as far
        as the owners of the others tell (`_others_until`).

        A room's orders are spread over all partitions, but a partition's engine waits
        only for its own two topics. Reading a backlog (a takeover, a worker catching
        up), one partition's dwell timers could be judged while another partition's
        orders that sold the product out by then were still unread, and the popup went
        out for a product with none left (tests/integration/test_stock_watermark.py).
        """
        orders = self._inputs[1]
        own = min((w.newest(orders) for q, w in self._waiting.items() if self._behind(orders, q)),
                  default=_FOREVER)
        return min(own, self._unapplied(), self._others_until())

    def _others_until(self) -> float:
        """The same for the order partitions of other workers: while one is not known to
        be read to its end (its owner's word is older than READ_STALE_MS), up to the
        newest order its owner had applied a second before its last word (their levels
        are in the stock logs by then, read after the word at each tick). A partition
        never told of is not waited for: a deployment of before, or none there yet.

        Two workers reading a backlog: one judged its viewers' dwells while the other
        still had the orders that sold the product out unread."""
        until = stale_until(self._reading, wall_ms=self._clock() * 1000, skip=self._waiting)
        return _FOREVER if until is None else until

    def _now(self, partition: int, behind: set[str], waiting: Reorder[ViewerEvent], *,
             until: float) -> dict[str, int]:
        """Each room's event time in the partition; wall time stands in for events only when
        the partition is idle.

        While an input is behind (or the worker is in a rebalance) the next events wait in
        Kafka: moving on by wall time would fire timers they cancel, and so would moving
        past what the inputs behind have brought (an adopted partition's clocks start
        from its saved states, before its first record is re-read), or past `until` (the
        stock levels known, `_stock_until`).
        """
        times = self._times.get(partition, {})
        if behind or until < _FOREVER:
            known = min(waiting.watermark(behind), until)
            return {room: int(min(event_ms, known)) for room, (event_ms, _) in times.items()
                    if known > -_FOREVER}
        wall_now_ms = int(self._clock() * 1000)
        return {room: now_of(event_ms, int(wall_s * 1000), wall_now_ms=wall_now_ms)
                for room, (event_ms, wall_s) in times.items()}


_ts = attrgetter("ts")
_FOREVER = float("inf")
