"""How far a room's timers may run: the watermark over the engine's two inputs.

A partition's viewer engine reads two topics: the platform's events (views, heartbeats,
carts) and the commerce backend's (orders). Each topic is in time order, but the two are
written by different producers and may trail each other. If the newest event of either
moved the room's clock, an order 7 s of show ahead of the views would fire a dwell timer
that a view still on its way cancels (at 10x the simulator's platform stream trailed its
commerce stream by up to 7.2 s of show, more than the 3 s grace).

So a room's timers run up to the *minimum* of each input's newest event time in that
room (the engine then keeps `grace_ms` below it), with two ways out for an input that
is merely quiet (orders are rare next to heartbeats, and a show may have none):

- an input more than `idle_ms` of event time behind the room's newest event holds
  nothing (`INPUT_IDLE_MS`, 10 s: the 7.2 s seen, with room to spare; at worst a dwell
  nudge waits 10 s more while one input is quiet);
- once the room's clock (its newest event plus the wall time since, from the worker)
  is `quiet_ms` past its newest event, no input holds (`QUIET_MS`, 2 s: the skew was
  0.72 s of wall at 10x; a silent room then fires as it did, 2 s later at most);
- an input never heard in the room holds nothing (a show without orders runs as before).

`idle_ms=0` turns the holds off: the newest event of either input moves the clock.

Pure and O(1) per event: two integers per room. Delaying a timer changes no result,
because the engine judges each timer as of its due time from the state's timestamps
(stream/engine/timers.py); the reference-model tests run with these holds.
"""

from __future__ import annotations

INPUT_IDLE_MS = 10_000
QUIET_MS = 2_000

PLATFORM, COMMERCE = 0, 1  # the inputs: the viewer topic's events, the order topic's

_UNHEARD = -(1 << 62)


class Watermarks:
    """Per room, the newest event time of each input; and how far its timers may run."""

    __slots__ = ("_heard", "idle_ms", "quiet_ms")

    def __init__(self, *, idle_ms: int = INPUT_IDLE_MS, quiet_ms: int = QUIET_MS) -> None:
        self.idle_ms = idle_ms
        self.quiet_ms = quiet_ms
        self._heard: dict[str, list[int]] = {}  # room -> [platform newest, commerce newest]

    def heard(self, room_id: str, source: int, ts: int) -> int:
        """An event at `ts` from input `source`: the time up to which the room's timers may
        run now (at most `ts`)."""
        heard = self._heard.get(room_id)
        if heard is None:
            heard = self._heard[room_id] = [_UNHEARD, _UNHEARD]
        if ts > heard[source]:
            heard[source] = ts
        return self._limit(heard, ts)

    def until(self, room_id: str, now: int, *, drained: bool = False) -> int:
        """The room's clock reads `now`: the time up to which its timers may run (at most
        `now`). `drained`: every input has been read to its end (a replay's last step)."""
        heard = self._heard.get(room_id)
        if heard is None or drained or now - max(heard) >= self.quiet_ms:
            return now
        return self._limit(heard, now)

    def forget(self, room_id: str) -> None:
        self._heard.pop(room_id, None)

    def _limit(self, heard: list[int], t: int) -> int:
        views, orders = heard
        if views == _UNHEARD or orders == _UNHEARD:
            return t
        return min(t, max(views if views < orders else orders, t - self.idle_ms))


__all__ = ["COMMERCE", "INPUT_IDLE_MS", "PLATFORM", "QUIET_MS", "Watermarks"]
