"""Every effect the viewer path decides (nudge, tag, follow-up) delivered once.

Each effect has a `once` key built from its content (event-time stamps included),
claimed in a numbered round before it is sent; once Kafka has acked a round, the worker
marks the round (one write, not one per effect). A replay after a crash re-decides the
same effects and publishes only what was never acked. Delivery runs behind the engine,
in one loop: while Redis claims a round the next batch is judged, and the round after
takes all decided meanwhile (fewer, bigger rounds when behind).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Container, Iterable

import msgspec

from stream.core.batch import SendMany
from stream.core.codec import encode
from stream.core.models import FollowUp, Nudge, TagChange
from stream.core.topics import Topics
from stream.engine.effects import Effect, Suppressed
from stream.store import keys, nudgebox, scripts
from stream.store.channels import queue_publish
from stream.store.claims import Claims, claim_item, once_id
from stream.store.connect import Client
from stream.store.roomlog import RoomLog
from stream.store.scripts import SCRIPT_ITEMS
from stream.store.stockread import available_text
from stream.worker.sentcheck import once_ids_in


class Delivery:
    """The claim rounds, the outbox and the acks of one worker's viewer path."""

    def __init__(self, *, redis: Client, rooms: RoomLog, send: SendMany, topics: Topics,
                 bootstrap: str, clock: Callable[[], float] = time.time,
                 nudge_hold_s: int = 60) -> None:
        self._redis = redis
        self._rooms = rooms
        self._send = send
        self._topics = topics
        self._bootstrap = bootstrap
        self._clock = clock
        self._nudge_hold_s = nudge_hold_s
        self._claims = Claims(redis)
        self._holder = nudgebox.Holder(redis)
        self._worker = secrets.token_hex(6)  # names this process's claim rounds
        self._round = 0  # the last claim round started
        self._claimed: set[str] = set()  # rooms claimed in since the last settle
        # What the next settle must do: acks to await, effects to mark done.
        self._acks: dict[tuple[str, int], Awaitable[object]] = {}  # last ack per topic-partition
        self._done_ids: dict[str, list[str]] = {}
        # Survive a failed round (Redis or Kafka away): the engine has moved on, so what it
        # decided is kept until delivered. The pipeline retries the batch, and every step
        # is safe to run again.
        self._outbox: list[tuple[int, Effect]] = []
        # `_inflight` is the current round of the delivery loop `_delivery`.
        self._delivery: asyncio.Future[None] | None = None
        self._inflight: list[tuple[int, Effect]] = []
        self._sent: list[tuple[int, Effect]] = []  # published, acks not yet awaited

    def add(self, effects: list[tuple[int, Effect]]) -> None:
        """Queue (partition, effect) pairs; the delivery loop starts if it is not running."""
        self._outbox += effects
        if self._outbox and self._delivery is None:
            self._delivery = asyncio.ensure_future(self._deliver_all())

    async def settle(self, kept: Container[int]) -> None:
        """Wait for the round under way and the Kafka acks since the last settle, then mark
        those effects done. `kept`: the partitions still owned (a failed round's effects
        of others are dropped: their new owner re-decides them)."""
        if self._delivery is not None:
            await asyncio.wait([self._delivery])
            self.check(kept)
        if self._acks:
            acks, self._acks = self._acks, {}
            try:
                await asyncio.gather(*acks.values())
            except BaseException:
                # Delivered again on the retry: claimed ('p'), so only what Kafka lacks is sent.
                self._outbox, self._sent = self._sent + self._outbox, []
                self._new_identity()
                raise
        self._sent = []
        if self._done_ids or self._claimed:
            async with self._redis.pipeline(transaction=False) as pipe:
                for room in self._claimed:  # every round so far is delivered and acked
                    pipe.hset(keys.acked(room), self._worker, self._round)
                for room, ids in self._done_ids.items():
                    await self._claims.done(pipe, room, ids)
                await scripts.execute(pipe)
            self._done_ids, self._claimed = {}, set()

    def forget(self, gone: Iterable[int]) -> None:
        """Drop what is queued or unacked for partitions given away."""
        gone = set(gone)
        self._outbox = [pair for pair in self._outbox if pair[0] not in gone]
        self._sent = [pair for pair in self._sent if pair[0] not in gone]

    async def _deliver_all(self) -> None:
        while self._outbox:
            self._inflight, self._outbox = self._outbox, []
            await self._deliver(self._inflight)
            self._sent += self._inflight
            self._inflight = []
        self._delivery = None

    def check(self, kept: Container[int]) -> None:
        """After a failed delivery, put its round back in the outbox and raise its error:
        the pipeline retries the batch after a pause."""
        delivery = self._delivery
        if delivery is None or not delivery.done():
            return
        self._delivery = None
        error = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if error is None:
            return
        self._outbox = [pair for pair in self._inflight if pair[0] in kept] + self._outbox
        self._inflight = []
        self._new_identity()
        raise error

    def _new_identity(self) -> None:
        """After a failed round: its marks may stay unsent (a partition revoked before the
        retry), so this worker's acked round must never cover them. Going on under a new
        name leaves them pending, and whoever meets them checks Kafka."""
        self._worker, self._round, self._claimed = secrets.token_hex(6), 0, set()

    async def _deliver(self, effects: list[tuple[int, Effect]]) -> None:
        """One round: publish each effect not delivered before; count it in its room's stats.

        Two phases, so a kill -9 loses nothing: claim under this round's mark, publish;
        `_settle` waits for Kafka's acks and then records the round as acked. A new owner
        re-decides the same effects and re-sends those whose round is not recorded and
        that it cannot find in Kafka (a send still in flight when it looks could repeat).
        Script calls of at most SCRIPT_ITEMS effects of one room.
        """
        if not effects:
            return
        # Counted on the books of the effect's broadcast: by its time, a follow-up by the
        # end it follows.
        by_room: dict[tuple[str, int], list[tuple[int, Effect, str]]] = {}
        rooms = self._rooms
        for p, effect in effects:
            book = (rooms.ended_book(effect.room_id, effect.due_at)
                    if isinstance(effect, FollowUp) else rooms.book_at(effect.room_id, effect.ts))
            by_room.setdefault((effect.room_id, book), []).append((p, effect, once_id(effect)))
        self._round += 1
        mark = f"p:{int(self._clock() * 1000)}:{self._worker}:{self._round}"
        self._claimed.update(room for room, _ in by_room)
        async with self._redis.pipeline(transaction=False) as pipe:
            slices = [(book, group[i:i + SCRIPT_ITEMS]) for (_, book), group in by_room.items()
                      for i in range(0, len(group), SCRIPT_ITEMS)]
            for book, group in slices:
                await self._claims.claim(pipe, group[0][1].room_id, mark=mark, book=book,
                                         items=[claim_item(e, once) for _, e, once in group])
            answers = await scripts.execute(pipe)
        sends: list[tuple[int, Effect, str]] = []
        pending: list[tuple[int, Effect, int]] = []
        for _, group in slices:
            for (p, effect, once), answer in zip(group, answers.pop(0), strict=True):
                if answer == 1:
                    if not isinstance(effect, Suppressed):
                        sends.append((p, effect, once))
                elif answer != 0:  # b'p:<ms>:<worker>:<round>'
                    pending.append((p, effect, int(answer.split(b":")[1])))
        if pending:
            unsent = await self._unsent(pending)
            for _, effect, once in unsent:  # their marks name another round: mark them 'd'
                self._done_ids.setdefault(effect.room_id, []).append(once)
            sends += unsent
        if not sends:
            return
        remaining = await available_text(self._redis, sorted(
            {(e.room_id, e.sku) for _, e, _ in sends
             if isinstance(e, Nudge) and e.sku and "{remaining}" in e.message}))
        # Each effect on the viewer's partition number (no hashing: a viewer's effects stay
        # in order), a partition's records in one batch; nudges also go to the gateways.
        records: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        shown: list[bytes] = []
        screen: list[Nudge] = []
        for p, effect, _ in sends:
            if isinstance(effect, Nudge):
                if effect.sku and "{remaining}" in effect.message:
                    effect = _with_remaining(
                        effect, remaining.get((effect.room_id, effect.sku), "?"))
                data = encode(effect)
                if effect.variant == "treatment":
                    shown.append(data)
                    screen.append(effect)
            else:
                data = encode(effect)
            records.setdefault((self._topic_of(effect), p), []).append(
                (effect.viewer_id.encode(), data))
        if shown:
            async with self._redis.pipeline(transaction=False) as pipe:
                # Held before published: a gateway that hears of it finds the held copy
                # (and drops it), one whose viewer is away leaves it for the reconnect.
                await self._holder.hold(pipe, screen, now_ms=int(self._clock() * 1000),
                                        hold_s=self._nudge_hold_s)
                for data in shown:
                    queue_publish(pipe, keys.NUDGE_CHANNEL, data)
                await scripts.execute(pipe)
        for (topic, p), batch in records.items():
            # Acks come in order within a partition: the last one covers the rest.
            self._acks[(topic, p)] = await self._send(topic, p, batch)

    async def _unsent(self, pending: list[tuple[int, Effect, int]],
                      ) -> list[tuple[int, Effect, str]]:
        """Of effects a worker claimed and may not have sent (it died), those not in Kafka.

        Reads each output partition from 10 s before the claim (stream/worker/sentcheck.py).
        """
        wanted: dict[tuple[str, int], int] = {}
        for p, effect, claimed_ms in pending:
            if isinstance(effect, Suppressed):
                continue
            tp = (self._topic_of(effect), p)
            wanted[tp] = min(wanted.get(tp, claimed_ms), claimed_ms)
        present = await once_ids_in({tp: ms - 10_000 for tp, ms in wanted.items()},
                                    bootstrap=self._bootstrap, topics=self._topics)
        out: list[tuple[int, Effect, str]] = []
        for p, effect, _ in pending:
            once = once_id(effect)
            if isinstance(effect, Suppressed) or once in present:
                self._done_ids.setdefault(effect.room_id, []).append(once)
            else:
                out.append((p, effect, once))
        return out

    def _topic_of(self, effect: Effect) -> str:
        if isinstance(effect, Nudge):
            return self._topics.nudges
        return self._topics.tags if isinstance(effect, TagChange) else self._topics.followups


def _with_remaining(nudge: Nudge, remaining: str) -> Nudge:
    return msgspec.structs.replace(nudge, message=nudge.message.replace("{remaining}", remaining))
