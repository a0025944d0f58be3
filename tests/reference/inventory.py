"""A plain sequential model of the inventory: the event log in event-time order, one
dict per SKU and per order, and the result every order event must get.

What it assumes: the sequence is event-time order. The live system applies each
partition in its own order, so the two agree whenever no SKU runs short (the shows the
tests compare are sized so) or when one partition holds every order of a SKU. Expiry
happens at the deadline, before any event at or after it; live, before the next event of
the order's own partition or at the sweeper's pass on that partition's clock, which
gives the same answers as long as no SKU runs short. A result of the sweeper carries the
partition clock's time, so `OrderOutcome` keeps no ts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stream.core.models import (
    Event,
    OrderCancelled,
    OrderEvent,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    StockSet,
)

MAX_QTY = 10  # per order line (docs/decisions.md: Stock)


@dataclass(frozen=True, order=True)
class OrderOutcome:
    order_id: str
    status: str
    reason: str


@dataclass
class _Order:
    lines: list[tuple[str, int]]
    status: str
    reason: str
    deadline: int
    paid: tuple[str, str] | None = None  # the first payment's answer


@dataclass
class Books:
    available: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    sold: dict[str, int] = field(default_factory=dict)
    orders: dict[str, _Order] = field(default_factory=dict)
    paid_early: set[str] = field(default_factory=set)
    outcomes: list[OrderOutcome] = field(default_factory=list)

    def move(self, order: _Order, src: dict[str, int], dst: dict[str, int]) -> None:
        for sku, qty in order.lines:
            src[sku] -= qty
            dst[sku] = dst.get(sku, 0) + qty

    def expire(self, until: int) -> None:
        """Reservations whose deadline is at or before `until` are released: expired."""
        for order_id, o in sorted(self.orders.items(), key=lambda x: x[1].deadline):
            if o.status == "reserved" and o.deadline <= until:
                self.move(o, self.reserved, self.available)
                o.status, o.reason = "released", "expired"
                self.outcomes.append(OrderOutcome(order_id, "released", "expired"))

    def place(self, e: OrderPlaced, ttl_ms: int) -> tuple[str, str]:
        if e.order_id in self.orders:
            o = self.orders[e.order_id]
            return o.status, o.reason
        reason = ""
        for item in e.items:
            if item.sku not in self.available:
                reason = "unknown_sku"
                break
            if item.qty > MAX_QTY:
                reason = "over_limit"
                break
            if self.available[item.sku] < item.qty:
                reason = "sold_out"
        lines = [(i.sku, i.qty) for i in e.items]
        if reason:
            self.orders[e.order_id] = _Order(lines, "rejected", reason, 0)
            return "rejected", reason
        o = self.orders[e.order_id] = _Order(lines, "reserved", "", e.ts + ttl_ms)
        self.move(o, self.available, self.reserved)
        if e.order_id in self.paid_early:
            self.pay(e.order_id)
            return o.status, "paid before placed"
        return "reserved", ""

    def pay(self, order_id: str) -> tuple[str, str]:
        o = self.orders.get(order_id)
        if o is None:
            self.paid_early.add(order_id)
            return "rejected", "unknown_order"
        if o.paid is not None:
            return o.paid
        answer = ("rejected", o.reason)
        if o.status == "reserved":
            self.move(o, self.reserved, self.sold)
            answer = ("confirmed", "")
        elif o.status == "released" and o.reason != "cancelled":
            if all(self.available[sku] >= qty for sku, qty in o.lines):
                self.move(o, self.available, self.sold)
                answer = ("confirmed", f"re-reserved after {o.reason}")
            else:
                answer = ("rejected", "expired")
        o.paid = answer
        if answer[0] == "confirmed":
            o.status, o.reason = answer
        return answer

    def release(self, order_id: str, reason: str) -> tuple[str, str]:
        o = self.orders.get(order_id)
        if o is None:
            return "rejected", "unknown_order"
        if o.status != "reserved":
            return o.status, o.reason
        self.move(o, self.reserved, self.available)
        o.status, o.reason = "released", reason
        return "released", reason


def outcomes(events: Iterable[Event], *, ttl_ms: int = 15 * 60_000,
             expire_until: int | None = None) -> list[OrderOutcome]:
    """Every result the order events call for, in order; expiries up to `expire_until`."""
    books = Books()
    seen: set[str] = set()
    log = sorted((e for e in events if isinstance(e, StockSet | OrderEvent)),
                 key=lambda e: (e.ts, isinstance(e, OrderEvent)))
    for e in log:
        books.expire(e.ts - 1)
        if isinstance(e, StockSet):
            if e.event_id not in seen:  # a redelivered stock.set is ignored
                seen.add(e.event_id)
                books.available[e.sku] = e.qty
            continue
        if isinstance(e, OrderPlaced):
            status, reason = books.place(e, ttl_ms)
        elif isinstance(e, OrderPaid):
            status, reason = books.pay(e.order_id)
        elif isinstance(e, OrderCancelled):
            status, reason = books.release(e.order_id, "cancelled")
        else:
            assert isinstance(e, OrderPaymentFailed)
            status, reason = books.release(e.order_id, "payment_failed")
        books.outcomes.append(OrderOutcome(e.order_id, status, reason))
    if expire_until is not None:
        books.expire(expire_until)
    return books.outcomes


def final(items: Iterable[OrderOutcome]) -> dict[str, OrderOutcome]:
    """The last outcome per order: what a consumer keeping the last result ends with."""
    return {o.order_id: o for o in items}
