"""Stock levels as the viewer engine sees them: available units per SKU as of a time.

Pure data, fed by the worker (the inventory script's results, shared between workers
through each room's stock log in Redis) or by a replay (`stream.engine.stockmodel`).
The engine asks what was available at a nudge's due time, so a replay that holds the
same points decides the same; a point that reaches a worker later than the timer's
grace (another worker's order far behind) is the limit of that, written in the README.
"""

from __future__ import annotations

from bisect import bisect_right, insort

# Above this many units stock is "plenty": no rule tells 150 from 400 (a rule's
# `low_stock.at_most` is at most this), so a run of such points is kept as its first one.
# That bounds memory for a hot SKU with thousands of changes a minute to the changes
# near its end, where every unit counts.
PLENTY = 100


def _ts(point: tuple[int, int]) -> int:
    return point[0]


class StockBook:
    """(room, sku) -> points (event ts, available after that change), sorted by ts."""

    __slots__ = ("_points",)

    def __init__(self) -> None:
        self._points: dict[tuple[str, str], list[tuple[int, int]]] = {}

    def observe(self, room_id: str, sku: str, ts: int, available: int) -> None:
        """One change of the SKU's stock, made by an event at `ts` (any arrival order)."""
        points = self._points.setdefault((room_id, sku), [])
        if points and ts >= points[-1][0]:
            last_ts, last = points[-1]
            if ts == last_ts:
                points[-1] = (ts, available)  # the same instant: the later change wins
            elif last != available and not (last > PLENTY and available > PLENTY):
                points.append((ts, available))
            return
        insort(points, (ts, available), key=_ts)

    def available_at(self, room_id: str, sku: str, ts: int) -> int | None:
        """Units available after the last change at or before `ts`; None if none is known."""
        points = self._points.get((room_id, sku))
        if not points:
            return None
        i = bisect_right(points, ts, key=_ts)
        return points[i - 1][1] if i else None

    def known(self, room_id: str) -> list[str]:
        """The SKUs of `room_id` with any point."""
        return sorted(sku for room, sku in self._points if room == room_id)

    def forget(self, room_id: str) -> None:
        for key in [k for k in self._points if k[0] == room_id]:
            del self._points[key]
