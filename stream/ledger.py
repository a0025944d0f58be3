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

from redis.asyncio import Redis

from stream import keys

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
    items: list[tuple[int, str, int]] = field(default_factory=list)  # (offset, name, delta)

    def add(self, offset: int, name: str, delta: int = 1) -> None:
        self.items.append((offset, name, delta))

    def after(self, fence: int) -> RoomBatch:
        return RoomBatch(self.room_id, self.topic, self.partition,
                         [item for item in self.items if item[0] > fence])


class Ledger:
    """Applies RoomBatches to Redis, once per record."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(FENCED_INCR)

    async def apply(self, batches: list[RoomBatch]) -> int:
        """Apply every batch; returns how many counts were skipped as already applied."""
        skipped = 0
        pending = [b for b in batches if b.items]
        while pending:
            async with self._redis.pipeline(transaction=False) as pipe:
                for b in pending:
                    await self._script(keys=[keys.fences(b.room_id), keys.stats(b.room_id),
                                             keys.seconds(b.room_id)],
                                       args=_args(b), client=pipe)
                answers = await pipe.execute()
            retry = []
            for b, fence in zip(pending, answers, strict=True):
                if fence == -2:
                    continue
                rest = b.after(int(fence))
                skipped += len(b.items) - len(rest.items)
                if rest.items:
                    retry.append(rest)
            pending = retry
        return skipped


def _args(batch: RoomBatch) -> list[str | int]:
    offsets = [offset for offset, _, _ in batch.items]
    args: list[str | int] = [f"{batch.topic}:{batch.partition}", min(offsets), max(offsets)]
    totals: Counter[str] = Counter()
    for _, name, delta in batch.items:
        totals[name] += delta
    for name, delta in totals.items():
        args += [name, delta]
    return args


async def read_stats(redis: Redis, room_id: str) -> dict[str, int | float]:
    """The room's counters; money (`gmv`) is a float, every count an int."""
    raw = await redis.hgetall(keys.stats(room_id))
    return {k.decode(): float(v) if b"." in v else int(v) for k, v in raw.items()}
