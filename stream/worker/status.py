"""What a worker says it is doing, at INFO: its group, its partitions, its progress.

faust at `--loglevel warn` (the default, as its INFO is a screenful per rebalance) says
nothing, so an operator could not tell a worker that joined from one that hangs. These
lines go to stderr on their own handler, whatever faust's level.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping

from faust.types import TP

log = logging.getLogger("stream.worker.status")

# One progress line per 15 s: often enough to see a stall within a minute, rare enough
# that a day's log stays under 6,000 lines.
EVERY_S = 15.0


def attach_handler() -> None:
    """Send the status lines to stderr at INFO (once per process)."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def describe(tps: Iterable[TP]) -> str:
    """`lc.viewer-events 0-3,6; lc.host-events 0-7`: partitions per topic, as ranges."""
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    if not by_topic:
        return "none"
    return "; ".join(f"{topic} {_ranges(sorted(parts))}"
                     for topic, parts in sorted(by_topic.items()))


def _ranges(parts: list[int]) -> str:
    out: list[str] = []
    start = prev = parts[0]
    for p in [*parts[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return ",".join(out)


def joining(group: str, broker: str, *, engine: str) -> None:
    log.info("joining consumer group %s at %s (viewer engine: %s)", group, broker, engine)


class Status:
    """Keeps what the lines report; the app calls it on rebalances and on a timer."""

    def __init__(self, *, group: str, events: Callable[[], int], retries: Callable[[], int],
                 clock: Callable[[], float]) -> None:
        self.group = group
        self._events = events
        self._retries = retries
        self._clock = clock
        self._held: frozenset[TP] = frozenset()
        self._last_events = 0
        self._last_at = clock()

    def assigned(self, tps: Iterable[TP]) -> None:
        held = frozenset(tps)
        if held == self._held and held:
            log.info("rebalanced in group %s; still holding %d partitions", self.group,
                     len(held))
            return
        gained, lost = held - self._held, self._held - held
        change = ""
        if self._held:
            change = f" (gained {describe(gained)}; gave up {describe(lost)})"
        log.info("joined group %s: holding %d partitions: %s%s", self.group, len(held),
                 describe(held), change)
        self._held = held

    def progress(self, lag: Mapping[TP, int | None]) -> None:
        """One line: events since the last line, the lag behind the highwater, retries."""
        now, events = self._clock(), self._events()
        known = [n for n in lag.values() if n is not None]
        behind = f"{sum(known)} records" if known or not lag else "unknown"
        log.info("processed %d events in %.0f s (%d in all); lag %s over %d partitions; "
                 "%d retries", events - self._last_events, now - self._last_at, events,
                 behind, len(lag), self._retries())
        self._last_events, self._last_at = events, now
