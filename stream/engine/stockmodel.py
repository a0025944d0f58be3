"""The inventory's rules replayed in memory, for a backtest: stock levels from events.

A replay of a past show has no Redis to ask what was available at a nudge's due time,
so it recomputes the stock from the show's own `stock.set` and `order.*` events in
event-time order, by the same rules as the inventory script (`stream.store.inventory`):
`stock.set` sets the available count, a placed order reserves all its lines or none
(unknown SKU, more than 10 a line, not enough left), payment confirms, a cancel or a
failed payment releases, an unpaid reservation expires 15 minutes after it was placed,
and a late payment is re-reserved if the stock is still there.

The live system applies orders in processing order, this model in event-time order:
the two agree except where orders from different partitions race for the last units
within a second or so, and at an expiry (the live sweep runs once a second).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from stream.core.models import (
    Event,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    StockSet,
)

RESERVATION_TTL_MS = 15 * 60_000  # the inventory's default
MAX_QTY = 10  # units per order line, as the inventory script enforces

Point = tuple[str, int, int, int]  # (sku, ts, available after the change, version)


@dataclass
class _Order:
    lines: list[tuple[str, int]]
    status: str  # reserved, confirmed, released, rejected
    deadline: int
    reason: str = ""


@dataclass
class StockModel:
    """One room's stock, moved by its events in event-time order (pure)."""

    reservation_ttl_ms: int = RESERVATION_TTL_MS
    max_qty: int = MAX_QTY
    available: dict[str, int] = field(default_factory=dict)
    _orders: dict[str, _Order] = field(default_factory=dict)
    _sets: set[str] = field(default_factory=set)
    _deadlines: list[tuple[int, str]] = field(default_factory=list)  # a heap
    _version: int = 0  # grows with every change, as the inventory's per-SKU version

    def apply(self, event: Event) -> list[Point]:
        """The changes one event makes: expiries due before it first, then its own."""
        out = list(self._expire(event.ts))
        if isinstance(event, StockSet):
            if event.event_id not in self._sets:
                self._sets.add(event.event_id)
                self.available[event.sku] = event.qty
                self._version += 1
                out.append((event.sku, event.ts, event.qty, self._version))
        elif isinstance(event, OrderPlaced):
            out += self._place(event)
        elif isinstance(event, OrderPaid):
            out += self._pay(event.order_id, event.ts)
        elif isinstance(event, OrderCancelled | OrderPaymentFailed):
            reason = "cancelled" if isinstance(event, OrderCancelled) else "payment_failed"
            out += self._release(event.order_id, event.ts, reason)
        return out

    def _place(self, e: OrderPlaced) -> list[Point]:
        if e.order_id in self._orders:
            return []  # a repeat: the first outcome stands
        lines = [(i.sku, i.qty) for i in e.items]
        ok = all(sku in self.available and qty <= self.max_qty
                 and self.available[sku] >= qty for sku, qty in lines)
        deadline = e.ts + self.reservation_ttl_ms
        self._orders[e.order_id] = _Order(lines, "reserved" if ok else "rejected", deadline)
        if not ok:
            return []
        heapq.heappush(self._deadlines, (deadline, e.order_id))
        return [self._move(sku, -qty, e.ts) for sku, qty in lines]

    def _pay(self, order_id: str, ts: int) -> list[Point]:
        o = self._orders.get(order_id)
        if o is None or o.status in ("confirmed", "rejected"):
            return []
        if o.status == "reserved":
            o.status = "confirmed"
            return []  # reserved -> sold: available does not move
        if o.reason == "cancelled" or not all(self.available.get(s, 0) >= q for s, q in o.lines):
            return []
        o.status = "confirmed"  # re-reserved after it expired or its payment failed
        return [self._move(sku, -qty, ts) for sku, qty in o.lines]

    def _release(self, order_id: str, ts: int, reason: str) -> list[Point]:
        o = self._orders.get(order_id)
        if o is None or o.status != "reserved":
            return []
        o.status, o.reason = "released", reason
        return [self._move(sku, qty, ts) for sku, qty in o.lines]

    def _expire(self, now: int) -> Iterator[Point]:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, oid = heapq.heappop(self._deadlines)
            yield from self._release(oid, deadline, "expired")  # nothing if settled since

    def _move(self, sku: str, delta: int, ts: int) -> Point:
        self.available[sku] = self.available.get(sku, 0) + delta
        self._version += 1
        return (sku, ts, self.available[sku], self._version)
