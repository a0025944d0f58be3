"""The worker's viewer path: one ViewerEngine per input partition, its state in Redis,
and every effect (nudge, tag, follow-up) delivered once.

- State: after each batch the changed viewers and the partition's offsets are saved in
  one script (same `{vs:p}` slot), so a restarted or rebalanced worker loads them and
  skips records whose effects are already in the state.
- Effects: the engine decides; Redis makes it once. A nudge, follow-up or suppression
  is published only if its `once` key was set now; a tag only if the viewer's tag set
  changed. A replay after a crash re-decides the same effects and publishes nothing.
- Time: each partition's clock is its newest event time plus the wall time since, so
  a due nudge fires in a silent room and a replay at 100x fires what real time did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import msgspec
from redis.asyncio import Redis

from stream import keys
from stream.codec import encode
from stream.models import FollowUp, Nudge, TagChange, ViewerEvent
from stream.pipeline import Item, Send
from stream.roomlog import RoomLog
from stream.rules import Rules
from stream.topics import Topics
from stream.viewers import Effect, Suppressed, ViewerEngine

# Effects' once-keys outlive any redelivery or restart of a broadcast.
ONCE_TTL_S = 3 * 24 * 3600
# Timers wait this long past their due time before firing: a viewer's order travels on
# another topic than their views and may arrive a little behind them; without the wait
# an order placed just before the 3-minute mark could still trigger the reminder.
GRACE_MS = 3000

# KEYS: states hash, offsets hash.  ARGV: n, then n field/blob pairs, then topic/offset pairs.
SAVE = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do redis.call('HSET', KEYS[1], ARGV[2 + 2 * i], ARGV[3 + 2 * i]) end
for i = 2 + 2 * n, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


class Engagement:
    """Pipeline handler for viewer and order events, plus the idle-time tick."""

    def __init__(self, *, redis: Redis, rules: Callable[[], Rules], rooms: RoomLog, send: Send,
                 topics: Topics, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._rules = rules
        self._rooms = rooms
        self._send = send
        self._topics = topics
        self._clock = clock
        self._save = redis.register_script(SAVE)
        self.engines: dict[int, ViewerEngine] = {}
        self._fences: dict[int, dict[str, int]] = {}
        self._times: dict[int, tuple[int, float]] = {}  # partition -> (event ms, wall s)

    async def handle(self, items: Sequence[Item]) -> None:
        mine = [i for i in items if isinstance(i.event, ViewerEvent)]
        if not mine:
            return
        partitions = {i.record.partition for i in mine}
        await self._load(partitions)
        await self._rooms.refresh({i.event.room_id for i in mine})
        rules = self._rules()
        effects: list[Effect] = []
        moved: dict[int, dict[str, int]] = {}
        for item in mine:
            p, topic, offset = item.record.partition, item.record.topic, item.record.offset
            if offset <= self._fences[p].get(topic, -1):
                continue  # already in the saved state: a redelivery
            engine = self.engines[p]
            if engine.rules is not rules:
                engine.rules = rules
            event = item.event
            assert isinstance(event, ViewerEvent)
            effects += engine.apply(event, self._rooms.get(event.room_id))
            self._observe(p, event.ts)
            moved.setdefault(p, {})[topic] = offset
        for p in partitions:
            effects += self.engines[p].advance(self._now(p), self._rooms.rooms)
        await self._deliver(effects)
        await self._persist(partitions, moved)

    async def tick(self) -> int:
        """Fire what is due on wall time in quiet partitions; returns effects delivered."""
        if not self.engines:
            return 0
        await self._rooms.refresh(self._rooms.rooms)
        effects: list[Effect] = []
        for p, engine in self.engines.items():
            if p in self._times:
                effects += engine.advance(self._now(p), self._rooms.rooms)
        delivered = await self._deliver(effects)
        await self._persist(set(self.engines), {})
        return delivered

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop partitions this worker no longer owns (their new owner loads the state)."""
        for p in partitions:
            self.engines.pop(p, None)
            self._fences.pop(p, None)
            self._times.pop(p, None)

    # --- state ------------------------------------------------------------------------

    async def _load(self, partitions: set[int]) -> None:
        missing = sorted(p for p in partitions if p not in self.engines)
        if not missing:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in missing:
                pipe.hgetall(keys.viewer_states(p))
                pipe.hgetall(keys.viewer_offsets(p))
            answers = await pipe.execute()
        for p, states, offsets in zip(missing, answers[::2], answers[1::2], strict=True):
            engine = ViewerEngine(self._rules(), grace_ms=GRACE_MS)
            engine.restore({_split(k): v for k, v in states.items()})
            self.engines[p] = engine
            self._fences[p] = {k.decode(): int(v) for k, v in offsets.items()}

    async def _persist(self, partitions: set[int], moved: dict[int, dict[str, int]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            queued = 0
            for p in partitions:
                blobs = self.engines[p].export_dirty()
                offsets = moved.get(p, {})
                if not blobs and not offsets:
                    continue
                args: list[object] = [len(blobs)]
                for (room, viewer), blob in blobs.items():
                    args += [f"{room}|{viewer}", blob]
                for topic, offset in offsets.items():
                    args += [topic, offset]
                    self._fences[p][topic] = offset
                await self._save(keys=[keys.viewer_states(p), keys.viewer_offsets(p)],
                                 args=args, client=pipe)
                queued += 1
            if queued:
                await pipe.execute()

    def _observe(self, partition: int, ts: int) -> None:
        seen = self._times.get(partition)
        if seen is None or ts > seen[0]:
            self._times[partition] = (ts, self._clock())

    def _now(self, partition: int) -> int:
        event_ms, wall_s = self._times.get(partition, (0, self._clock()))
        return event_ms + max(0, int((self._clock() - wall_s) * 1000))

    # --- effects ----------------------------------------------------------------------

    async def _deliver(self, effects: list[Effect]) -> int:
        """Publish each effect that is new; count it in its room's stats."""
        if not effects:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for effect in effects:
                _claim(pipe, effect)
            claimed = await pipe.execute()
        fresh = [e for e, ok in zip(effects, claimed, strict=True) if ok]
        if not fresh:
            return 0
        remaining = await self._remaining([e for e in fresh if isinstance(e, Nudge)])
        async with self._redis.pipeline(transaction=False) as pipe:
            for effect in fresh:
                await self._publish(pipe, effect, remaining)
            await pipe.execute()
        return len(fresh)

    async def _remaining(self, nudges: list[Nudge]) -> dict[tuple[str, str], str]:
        wanted = sorted({(n.room_id, n.sku) for n in nudges
                         if n.sku and "{remaining}" in n.message})
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, sku in wanted:
                pipe.hget(keys.stock_prefix(room) + sku, "available")
            answers = await pipe.execute()
        return {k: (v or b"?").decode() for k, v in zip(wanted, answers, strict=True)}

    async def _publish(self, pipe: Redis, effect: Effect,
                       remaining: dict[tuple[str, str], str]) -> None:
        stats = keys.stats(effect.room_id)
        if isinstance(effect, Nudge):
            if effect.sku and "{remaining}" in effect.message:
                effect = _with_remaining(effect, remaining.get((effect.room_id, effect.sku), "?"))
            data = encode(effect)
            await self._send(self._topics.nudges, data, effect.viewer_id.encode())
            if effect.variant == "treatment":
                pipe.publish(keys.NUDGE_CHANNEL, data)
            pipe.hincrby(stats, "nudges", 1)
            pipe.hincrby(stats, f"nudges:{effect.rule_id}:{effect.variant}", 1)
        elif isinstance(effect, TagChange):
            await self._send(self._topics.tags, encode(effect), effect.viewer_id.encode())
            pipe.hincrby(stats, "tags" if effect.op == "add" else "tags_removed", 1)
        elif isinstance(effect, FollowUp):
            await self._send(self._topics.followups, encode(effect), effect.viewer_id.encode())
            pipe.hincrby(stats, "followups", 1)
        elif isinstance(effect, Suppressed):
            pipe.hincrby(stats, f"suppressed:{effect.reason}", 1)


def _claim(pipe: Redis, effect: Effect) -> None:
    """Queue the command whose answer says whether `effect` is new."""
    if isinstance(effect, TagChange):
        member = f"{effect.room_id}|{effect.tag}|{effect.value}"
        if effect.op == "add":
            pipe.sadd(keys.viewer_tags(effect.viewer_id), member)
        else:
            pipe.srem(keys.viewer_tags(effect.viewer_id), member)
        return
    if isinstance(effect, Nudge):
        what = f"n|{effect.viewer_id}|{effect.rule_id}|{effect.ts}"
    elif isinstance(effect, FollowUp):
        what = f"f|{effect.viewer_id}|{effect.due_at}"
    else:
        what = f"s|{effect.viewer_id}|{effect.rule_id}|{effect.ts}|{effect.reason}"
    pipe.set(keys.once(effect.room_id, what), 1, nx=True, ex=ONCE_TTL_S)


def _with_remaining(nudge: Nudge, remaining: str) -> Nudge:
    return msgspec.structs.replace(nudge, message=nudge.message.replace("{remaining}", remaining))


def _split(field: bytes) -> tuple[str, str]:
    room, _, viewer = field.decode().partition("|")
    return room, viewer
