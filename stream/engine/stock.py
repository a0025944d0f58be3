"""Stock levels as the viewer engine sees them: available units per SKU as of a time.

Pure data, fed by the worker (the inventory script's results, shared between workers
through each room's stock log in Redis) or by a replay (`stream.engine.stockmodel`).
The engine asks what was available at a nudge's due time T, and gets the newest level
(highest version) among the changes made by events at or before T. The newest, not the
last by time: the inventory applies orders in processing order, and an order of a
partition read late (ts 550) is applied after orders of ts 600..1000 from another; its
level, the lowest, holds every change before it. A replay that holds the same points
decides the same; a point that reaches a worker later than the timer's grace is the
limit of that, written in the README.
"""

from __future__ import annotations

from bisect import bisect_right

# Above this many units stock is "plenty": no rule tells 150 from 400 (a rule's
# `low_stock.at_most` is at most this), so a run of such points is kept as its first
# one (with the run's newest version). That bounds memory for a hot SKU with thousands
# of changes a minute to the changes near its end, where every unit counts.
PLENTY = 100

Point = tuple[int, int, int]  # (event ts, version, available after the change)


def _ts(point: Point) -> int:
    return point[0]


class _Levels:
    """One SKU's points sorted by ts, and for each prefix the point of highest version."""

    __slots__ = ("best", "points")

    def __init__(self) -> None:
        self.points: list[Point] = []
        self.best: list[Point] | None = []  # None: rebuild before the next read

    def add(self, point: Point) -> None:
        points = self.points
        i = bisect_right(points, point[0], key=_ts)
        before = points[i - 1] if i else None
        if before == point:
            return  # the same change again (the worker's own, then from the log)
        if before is not None and before[2] > PLENTY and point[2] > PLENTY:
            points[i - 1] = (before[0], max(before[1], point[1]), before[2])
        else:
            points.insert(i, point)
        self.best = None

    def at(self, ts: int) -> int | None:
        if self.best is None:
            best: list[Point] = []
            for p in self.points:
                best.append(p if not best or p[1] >= best[-1][1] else best[-1])
            self.best = best
        i = bisect_right(self.points, ts, key=_ts)
        return self.best[i - 1][2] if i else None


class StockBook:
    """(room, sku) -> the SKU's levels by event time and version."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: dict[tuple[str, str], _Levels] = {}

    def observe(self, room_id: str, sku: str, ts: int, available: int, version: int) -> None:
        """One change of the SKU's stock (`version` grows with every change), made by an
        event at `ts`; any arrival order, repeats harmless."""
        levels = self._levels.get((room_id, sku))
        if levels is None:
            levels = self._levels[room_id, sku] = _Levels()
        levels.add((ts, version, available))

    def available_at(self, room_id: str, sku: str, ts: int) -> int | None:
        """Units available as of `ts`: after the newest change by an event at or before
        it; None if none is known."""
        levels = self._levels.get((room_id, sku))
        return None if levels is None else levels.at(ts)

    def known(self, room_id: str) -> list[str]:
        """The SKUs of `room_id` with any point."""
        return sorted(sku for room, sku in self._levels if room == room_id)

    def forget(self, room_id: str) -> None:
        for key in [k for k in self._levels if k[0] == room_id]:
            del self._levels[key]
