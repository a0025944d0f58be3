"""Event time per room, advanced by wall time while the room is idle.

A replay at 100x moves the clock 100x faster; a silent room's clock still moves with
the wall, so a reservation expires (and, later, a nudge fires) without new events.
"""

from __future__ import annotations

from stream.store import keys, scripts
from stream.store.connect import AnyPipeline, Client

# KEYS: clock hash.  ARGV: event ms, wall ms.  The clock only moves forward.
ADVANCE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'event_ms') or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'event_ms', ARGV[1], 'wall_ms', ARGV[2])
end
return 1
"""


def now_of(event_ms: int, wall_ms: int, *, wall_now_ms: int) -> int:
    """The room's time: its newest event time plus the wall time since that event came."""
    return event_ms + max(0, wall_now_ms - wall_ms)


class RoomClocks:
    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._advance = redis.register_script(ADVANCE)

    async def advance(self, pipe: AnyPipeline, room_id: str, *, event_ms: int,
                      wall_ms: int) -> None:
        """Queue a forward move of the room's clock on `pipe`."""
        await scripts.call(
            self._advance, keys=[keys.clock(room_id)], args=[event_ms, wall_ms], client=pipe)

    async def now(self, room_id: str, *, wall_now_ms: int) -> int | None:
        """The room's time now, or None for a room that has seen no event."""
        event_ms, wall_ms = await self._redis.hmget(keys.clock(room_id), "event_ms", "wall_ms")
        if event_ms is None or wall_ms is None:
            return None
        return now_of(int(event_ms), int(wall_ms), wall_now_ms=wall_now_ms)
