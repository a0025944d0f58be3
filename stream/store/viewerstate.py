"""The viewer engines' saved state: one hash of viewer blobs and one of offsets per partition.

Every second a worker saves the viewers changed since, with the offsets they are up to,
in scripts per partition (`lc:{vs:P}:*`, one slot), so a restarted or rebalanced worker
loads a partition in one `HGETALL` and starts reading after those offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from stream.store import keys, scripts
from stream.store.connect import AnyPipeline, Client
from stream.store.scripts import SCRIPT_ITEMS

# KEYS: states hash, offsets hash, room index.  ARGV: a msgpack array field, size, field,
# size...; the blobs end to end (Lua's cmsgpack has no binary type); a msgpack array
# viewer, room, viewer, room... of the pairs new to the room index; then topic/offset
# pairs. Room ids hold no newline (models.ID_PATTERN), so the index joins them with one.
SAVE = """
local new = cmsgpack.unpack(ARGV[3])
for i = 1, #new, 2 do
  local rooms = redis.call('HGET', KEYS[3], new[i])
  if not rooms then
    redis.call('HSET', KEYS[3], new[i], new[i + 1])
  elseif not string.find('\\n' .. rooms .. '\\n', '\\n' .. new[i + 1] .. '\\n', 1, true) then
    redis.call('HSET', KEYS[3], new[i], rooms .. '\\n' .. new[i + 1])
  end
end
local sizes, blobs, at, kv = cmsgpack.unpack(ARGV[1]), ARGV[2], 1, {}
for i = 1, #sizes, 2 do
  kv[#kv + 1] = sizes[i]
  kv[#kv + 1] = string.sub(blobs, at, at + sizes[i + 1] - 1)
  at = at + sizes[i + 1]
  if #kv == 200 or i + 1 == #sizes then
    redis.call('HSET', KEYS[1], unpack(kv))
    kv = {}
  end
end
for i = 4, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return 1
"""
_pack = msgspec.msgpack.Encoder().encode

Saved = tuple[dict[tuple[str, str], bytes], dict[str, int]]  # (room, viewer) -> blob; offsets


class ViewerStates:
    def __init__(self, redis: Client, *, deployment: str) -> None:
        self._redis = redis
        self._deployment = deployment
        self._save = redis.register_script(SAVE)
        # (room, viewer) pairs this process knows are in their partition's room index.
        self._indexed: set[tuple[str, str]] = set()

    async def load(self, partitions: list[int]) -> list[Saved]:
        """Each partition's viewer blobs and saved offsets, in the order asked."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hgetall(keys.viewer_states(self._deployment, p))
                pipe.hgetall(keys.viewer_offsets(self._deployment, p))
            answers = await pipe.execute()
        return [({_split(k): v for k, v in states.items()},
                 {k.decode(): int(v) for k, v in offsets.items()})
                for states, offsets in zip(answers[::2], answers[1::2], strict=True)]

    async def save(self, pipe: AnyPipeline, partition: int, blobs: Mapping[tuple[str, str], bytes],
                   offsets: Mapping[str, int]) -> list[tuple[str, str]]:
        """Queue the save of `blobs` on `pipe`, in calls of at most SCRIPT_ITEMS viewers; the
        offsets go with the last, so they never run ahead of the states they cover.
        Returns the (room, viewer) pairs it adds to the room index: pass them to `indexed`
        once the pipeline has run (a failed save sends them again)."""
        items = list(blobs.items())
        added: list[tuple[str, str]] = []
        for i in range(0, max(len(items), 1), SCRIPT_ITEMS):
            sizes: list[str | int] = []
            new: list[str] = []
            for pair, blob in items[i:i + SCRIPT_ITEMS]:
                room, viewer = pair
                sizes += [f"{room}|{viewer}", len(blob)]
                if pair not in self._indexed:
                    new += [viewer, room]
                    added.append(pair)
            args: list[bytes | str | int] = [
                _pack(sizes), b"".join(b for _, b in items[i:i + SCRIPT_ITEMS]), _pack(new)]
            if i + SCRIPT_ITEMS >= len(items):
                for topic, offset in offsets.items():
                    args += [topic, offset]
            await scripts.call(
                self._save, keys=[keys.viewer_states(self._deployment, partition),
                                  keys.viewer_offsets(self._deployment, partition),
                                  keys.viewer_room_index(self._deployment, partition)],
                args=args, client=pipe)
        return added

    def indexed(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Note pairs `save` added to the room index, once their save has run."""
        self._indexed.update(pairs)

    async def saved_fences(self, partitions: Iterable[int]) -> dict[int, dict[str, int]]:
        """Each partition's saved offsets: where its viewer state is up to, per topic."""
        wanted = sorted(partitions)
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in wanted:
                pipe.hgetall(keys.viewer_offsets(self._deployment, p))
            answers = await pipe.execute()
        return {p: {k.decode(): int(v) for k, v in a.items()}
                for p, a in zip(wanted, answers, strict=True)}


def _split(field: bytes) -> tuple[str, str]:
    room, _, viewer = field.decode().partition("|")
    return room, viewer
