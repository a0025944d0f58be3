"""Effects once: the claim of a nudge, tag or follow-up before it is sent, and its done mark.

Every effect has an id built from its content (event-time stamps included), so a replay
builds the same one. A worker claims a round of effects under a mark naming itself and
the round, sends them, and once Kafka has acked the round records it as acked (one write
per room, not one per effect). `stream.worker.engagement` drives it.
"""

from __future__ import annotations

import msgspec

from stream.core.codec import encode
from stream.core.models import FollowUp, Nudge, TagChange
from stream.core.reasons import stat_field
from stream.engine.effects import Effect
from stream.store import keys, scripts
from stream.store.connect import AnyPipeline, Client

# Effects' once-keys outlive any redelivery or restart of a broadcast.
ONCE_TTL_S = 3 * 24 * 3600

# Many items go to a script as one msgpack array (ARGV), not one argument each: packing
# thousands of arguments cost the worker more than the script costs Redis.

# Effects of one room in one call. KEYS: the room's stats hash, its first-nudge hash, its
# acked hash, its follow-ups hash. ARGV: once-key prefix, ttl, this round's mark
# `p:<wall ms>:<worker>:<round>`, then a msgpack array with per effect
# [id, stat fields, a, b, c, d]: a nudge has a `rule|viewer` and b `variant|ts`, kept if
# the first of that rule for that viewer (the host's uplift); a follow-up has c
# `viewer|due_at` and d the follow-up as JSON, kept for the export (claimed once, so
# kept once). Returns per effect: 1 = new, deliver it; 0 = delivered
# ('d', or a round its worker has marked acked); or the mark of a round a worker may have
# died in before Kafka acked it. Counts, tag sets and first nudges change only when new.
# One mark per round, not a 'd' per effect after the ack: half the writes.
CLAIM = """
local out, counts, acked = {}, {}, {}
for i, e in ipairs(cmsgpack.unpack(ARGV[4])) do
  local v = redis.call('SET', ARGV[1] .. e[1], ARGV[3], 'EX', ARGV[2], 'NX', 'GET')
  if v then
    local worker, round = string.match(v, '^p:%d+:([^:]+):(%d+)$')
    if worker and acked[worker] == nil then
      acked[worker] = tonumber(redis.call('HGET', KEYS[3], worker) or '-1')
    end
    if v == 'd' or (worker and tonumber(round) <= acked[worker]) then
      out[i] = 0
    else
      out[i] = v
    end
  else
    for _, field in ipairs(e[2]) do counts[field] = (counts[field] or 0) + 1 end
    if e[3] then redis.call('HSETNX', KEYS[2], e[3], e[4]) end
    if e[5] then redis.call('HSETNX', KEYS[4], e[5], e[6]) end
    out[i] = 1
  end
end
for field, n in pairs(counts) do redis.call('HINCRBY', KEYS[1], field, n) end
return out
"""

# Effects found in Kafka, or re-sent, for a round of another worker (rare: a takeover).
# KEYS: none of its own; ARGV: once-key prefix, a msgpack array of ids acked by Kafka.
DONE = """
for _, id in ipairs(cmsgpack.unpack(ARGV[2])) do
  redis.call('SET', ARGV[1] .. id, 'd', 'XX', 'KEEPTTL')
end
return 1
"""
_pack = msgspec.msgpack.Encoder().encode


class Claims:
    """The two scripts, queued on a caller's pipeline (one round trip per round)."""

    def __init__(self, redis: Client) -> None:
        self._claim = redis.register_script(CLAIM)
        self._done = redis.register_script(DONE)

    async def claim(self, pipe: AnyPipeline, room: str, *, mark: str,
                    items: list[tuple[object, ...]], book: int = 0) -> None:
        """Queue the claim of `items` (from `claim_item`) under this round's `mark`,
        counted on the books of the room's broadcast `book`."""
        await scripts.call(self._claim,
                           keys=[keys.stats(room, book), keys.nudged(room, book),
                                 keys.acked(room), keys.followups(room, book)],
                           args=[keys.once(room, ""), ONCE_TTL_S, mark, _pack(items)],
                           client=pipe)

    async def done(self, pipe: AnyPipeline, room: str, ids: list[str]) -> None:
        """Queue the done marks of effects found in Kafka (or re-sent) for another round."""
        await scripts.call(self._done, keys=[keys.stats(room)],
                           args=[keys.once(room, ""), _pack(ids)], client=pipe)


def once_id(effect: Effect) -> str:
    """The effect's identity: everything in it is decided by event time, so a replay
    builds the same id."""
    if isinstance(effect, Nudge):
        return f"n|{effect.viewer_id}|{effect.rule_id}|{effect.ts}"
    if isinstance(effect, TagChange):
        return f"t|{effect.viewer_id}|{effect.tag}|{effect.value}|{effect.op}|{effect.ts}"
    if isinstance(effect, FollowUp):
        return f"f|{effect.viewer_id}|{effect.due_at}"
    return f"s|{effect.viewer_id}|{effect.rule_id}|{effect.ts}|{effect.reason}"


_TAG_STATS = {"add": ("tags",), "remove": ("tags_removed",)}
_FOLLOWUP_STATS = ("followups",)


def claim_item(effect: Effect, once: str) -> tuple[object, ...]:
    """[id, stat fields, a, b, c, d] of one effect, for CLAIM."""
    if isinstance(effect, TagChange):
        return (once, _TAG_STATS[effect.op])
    if isinstance(effect, Nudge):
        return (once, ("nudges", f"nudges:{effect.rule_id}:{effect.variant}"),
                f"{effect.rule_id}|{effect.viewer_id}", f"{effect.variant}|{effect.ts}")
    if isinstance(effect, FollowUp):
        return (once, _FOLLOWUP_STATS, None, None, f"{effect.viewer_id}|{effect.due_at}",
                encode(effect).decode())  # a str: cmsgpack cannot read bin
    return (once, (stat_field(effect.rule_id, effect.reason),))
