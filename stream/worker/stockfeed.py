"""Coalescing stock updates: per SKU at most one every `interval` (10/s by default),
and the last value always delivered, so 100k screens are not sent one message per order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from stream.core.models import StockUpdate

Key = tuple[str, str]  # (room_id, sku)


class Coalescer:
    """Pure: keeps the newest update per SKU and says which are due to go out."""

    def __init__(self, *, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self._pending: dict[Key, StockUpdate] = {}
        self._sent_at: dict[Key, float] = {}
        self._sent_version: dict[Key, int] = {}

    def offer(self, updates: Iterable[StockUpdate]) -> None:
        for update in updates:
            key = (update.room_id, update.sku)
            if update.version <= self._sent_version.get(key, -1):
                continue
            held = self._pending.get(key)
            if held is None or update.version > held.version:
                self._pending[key] = update

    def due(self, now: float) -> list[StockUpdate]:
        """Take the pending updates whose SKU has not been sent within the interval."""
        out = []
        for key, update in list(self._pending.items()):
            if now - self._sent_at.get(key, float("-inf")) >= self.interval_s:
                out.append(update)
                del self._pending[key]
                self._sent_at[key] = now
                self._sent_version[key] = update.version
        return out

    def __len__(self) -> int:
        return len(self._pending)


class StockFeed:
    """A Coalescer with an async publisher, flushed by a timer in the worker."""

    def __init__(self, publish: Callable[[list[StockUpdate]], Awaitable[None]], *,
                 clock: Callable[[], float], interval_s: float = 0.1) -> None:
        self._publish = publish
        self._clock = clock
        self.coalescer = Coalescer(interval_s=interval_s)

    def offer(self, updates: Iterable[StockUpdate]) -> None:
        self.coalescer.offer(updates)

    async def flush(self) -> int:
        due = self.coalescer.due(self._clock())
        if due:
            await self._publish(due)
        return len(due)
