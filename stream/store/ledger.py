"""Room counters applied exactly once per Kafka record, whatever the redelivery.

Kafka delivers at least once. Each (room, topic, partition) keeps a fence: the last
offset whose counts are in. A script adds a batch's counts only if the batch starts
past the fence, and moves the fence in the same atomic step; on a conflict (a
redelivery after a crash or rebalance) the caller drops what is already counted
and tries again. One script call per room per batch, not one per event.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from stream.store import keys, scripts
from stream.store.connect import Client
from stream.store.replies import number, text

# KEYS: fences, stats, seconds.  ARGV: fence field, first offset, last offset, then
# field/delta pairs; a field `s:<rest>` goes to the seconds hash as `<rest>`.
# Returns -2 when applied, else the fence that refused it.
FENCED_INCR = """
local fence = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if fence >= tonumber(ARGV[2]) then return fence end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV, 2 do
  if string.sub(ARGV[i], 1, 2) == 's:' then
    redis.call('HINCRBY', KEYS[3], string.sub(ARGV[i], 3), ARGV[i + 1])
  else
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return -2
"""


@dataclass(slots=True)
class RoomBatch:
    """Counts for one room from one partition, each tagged with its record's offset."""

    room_id: str
    topic: str
    partition: int
    book: int = 0  # the broadcast whose counters these are (see RoomTimeline.book_at)
    # offset -> counter -> delta: an envelope's events share one offset, so a batch of
    # thousands of events sums into a few Counters as it is built.
    counts: dict[int, Counter[str]] = field(default_factory=dict)

    def at(self, offset: int) -> Counter[str]:
        """The counts of the record at `offset`, to add to."""
        c = self.counts.get(offset)
        if c is None:
            c = self.counts[offset] = Counter()
        return c

    def add(self, offset: int, name: str, delta: int = 1) -> None:
        self.at(offset)[name] += delta

    def after(self, fence: int) -> RoomBatch:
        return RoomBatch(self.room_id, self.topic, self.partition, self.book,
                         {o: c for o, c in self.counts.items() if o > fence})

    def total(self) -> int:
        return sum(c.total() for c in self.counts.values())


# KEYS: the consumed hash. ARGV: field, offset, ... Each field ends at most its offset.
HOLD_BACK = """
for i = 1, #ARGV, 2 do
  local at = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '')
  if at == nil or at > tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


class Ledger:
    """Applies RoomBatches to Redis, once per record."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._script = redis.register_script(FENCED_INCR)
        self._hold = redis.register_script(HOLD_BACK)

    async def mark_consumed(self, ends: dict[str, int]) -> None:
        """Record `topic:partition` -> last offset whose every effect is applied."""
        if ends:
            await self._redis.hset(keys.consumed(), mapping=ends)  # type: ignore[arg-type]

    async def hold_back(self, caps: dict[str, int]) -> None:
        """Lower `topic:partition`'s consumed mark to at most its offset in `caps` (set it
        if absent): records a handler holds unapplied (Orders) are read again after a
        crash, whatever faust committed and the engine's fence passed."""
        if caps:
            await self._hold(keys=[keys.consumed()],
                             args=[x for kv in caps.items() for x in kv])

    async def consumed(self) -> dict[str, int]:
        return {text(k): int(v) for k, v in (await self._redis.hgetall(keys.consumed())).items()}

    async def apply(self, batches: list[RoomBatch]) -> int:
        """Apply every batch; returns how many counts were skipped as already applied."""
        skipped = 0
        pending = [b for b in batches if b.counts]
        while pending:
            async with self._redis.pipeline(transaction=False) as pipe:
                for b in pending:
                    await scripts.call(
                        self._script, keys=[keys.fences(b.room_id),
                                            keys.stats(b.room_id, b.book),
                                            keys.seconds(b.room_id, b.book)],
                        args=_args(b), client=pipe)
                answers = await scripts.execute(pipe)
            retry = []
            for b, fence in zip(pending, answers, strict=True):
                if fence == -2:
                    continue
                rest = b.after(int(fence))
                skipped += b.total() - rest.total()
                if rest.counts:
                    retry.append(rest)
            pending = retry
        return skipped


def _args(batch: RoomBatch) -> list[str | int]:
    # A fence per book: a record whose events straddle a broadcast's end counts in two.
    fence = f"{batch.topic}:{batch.partition}" + (f":b{batch.book}" if batch.book else "")
    args: list[str | int] = [fence, min(batch.counts), max(batch.counts)]
    totals: Counter[str] = Counter()
    for c in batch.counts.values():
        totals.update(c)
    for name, delta in totals.items():
        args += [name, delta]
    return args


async def read_stats(redis: Client, room_id: str, book: int = 0) -> dict[str, int | float]:
    """The counters of a room's broadcast (its first by default); money (`gmv`) is a float,
    every count an int."""
    raw = await redis.hgetall(keys.stats(room_id, book))
    return {text(k): number(v) for k, v in raw.items()}
