"""Plain facts about one viewer read off their event list: visits, watch time, focus,
orders. Every function takes the list in processing order (event time, then arrival)."""

from __future__ import annotations

from dataclasses import dataclass

from stream.core.models import (
    CartAdded,
    CartClicked,
    Comment,
    FanJoined,
    Like,
    OrderCancelled,
    OrderPaid,
    OrderPlaced,
    ProductViewed,
    Share,
    ViewerEvent,
    ViewerHeartbeat,
    ViewerJoined,
    ViewerLeft,
)

# Events that prove the viewer is in the room (a lost join is made up by the first one).
PRESENCE = (ViewerHeartbeat, ProductViewed, Like, Comment, Share, FanJoined, CartClicked,
            CartAdded)
# Every event from the app proves it, a join or a leave too; orders come from the commerce
# backend and prove nothing.
PROOFS = (ViewerJoined, ViewerLeft, *PRESENCE)
# A visit is over once its newest proof is this old (LIVECOMMERCE_PRESENCE_TIMEOUT_S's
# default, 60 s: two of the app's 30 s heartbeats).
TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Visit:
    start: int
    # The leave, the join that restarted it, or when it timed out; None: still in the room
    # (until its newest event is the timeout old).
    stop: int | None
    watched: int  # ms counted for it once it is over (to the leave, or to its last event)
    last_seen: int  # its newest event


@dataclass(frozen=True)
class After:
    """The viewer as of just after one event: watch ms, visits, in the room, whether the
    event was a leave that closed a visit, whether the event found the visit timed out."""

    watch: int
    visits: int
    in_room: bool
    closed: bool
    lapsed: bool = False


def visits(events: list[ViewerEvent], *,
           timeout_ms: int = TIMEOUT_MS) -> tuple[list[Visit], list[After]]:
    """The visits, and the viewer after each event.

    A visit opens at a join, or at a presence event while out of the room and later than
    the last leave (a lost join, or back after a leave or a timeout); a leave closes it at
    the leave; a second join without a leave closes it at its last event. A proof that
    comes when the visit's newest event is `timeout_ms` old or more finds it over: it ended
    at that newest event, the viewer gone from when the timeout passed (but before this
    proof, which is then taken as usual).
    """
    done: list[Visit] = []
    start: int | None = None
    seen = 0
    left = -1  # the last leave or timeout; -1: none
    after: list[After] = []
    for e in events:
        closed = lapsed = False
        if start is not None and isinstance(e, PROOFS) and e.ts - seen >= timeout_ms:
            left = min(seen + timeout_ms, e.ts - 1)
            done.append(Visit(start, left, seen - start, seen))
            start, lapsed = None, True
        if isinstance(e, ViewerJoined):
            if start is not None:
                done.append(Visit(start, e.ts, seen - start, seen))
            start = seen = e.ts
        elif isinstance(e, ViewerLeft):
            if start is not None:
                done.append(Visit(start, e.ts, max(0, e.ts - start), e.ts))
                start, closed, left = None, True, e.ts
        elif isinstance(e, PRESENCE):
            if start is not None:
                seen = max(seen, e.ts)
            elif e.ts > left:
                start = seen = e.ts
        watch = sum(v.watched for v in done) + (seen - start if start is not None else 0)
        after.append(After(watch, len(done) + (start is not None), start is not None, closed,
                           lapsed))
    if start is not None:
        done.append(Visit(start, None, seen - start, seen))
    return done, after


def present_at(visits: list[Visit], ts: int, *, timeout_ms: int = TIMEOUT_MS) -> bool:
    """In a visit at `ts`: from its start (inclusive) to its stop (exclusive); a visit still
    open stops when its newest event is `timeout_ms` old."""
    return any(v.start <= ts < (v.stop if v.stop is not None else v.last_seen + timeout_ms)
               for v in visits)


@dataclass(frozen=True)
class Focus:
    """A product card kept open: from `since` until `until` (None: never broken)."""

    sku: str
    since: int
    until: int | None
    first: int  # index of the product.viewed that opened it
    last: int | None  # index of the event that broke it


def focus_spans(events: list[ViewerEvent], after: list[After]) -> list[Focus]:
    """A product.viewed of a product not in focus opens a span; another product, a leave
    that closes a visit, or an event that finds the visit timed out ends it (that event
    may open the next). Viewing the product in focus again changes nothing."""
    spans: list[Focus] = []
    current: tuple[str, int, int] | None = None
    for i, e in enumerate(events):
        if after[i].lapsed and current is not None:
            spans.append(Focus(current[0], current[1], e.ts, current[2], i))
            current = None
        if isinstance(e, ProductViewed) and (current is None or current[0] != e.sku):
            if current is not None:
                spans.append(Focus(current[0], current[1], e.ts, current[2], i))
            current = (e.sku, e.ts, i)
        elif isinstance(e, ViewerLeft) and after[i].closed and current is not None:
            spans.append(Focus(current[0], current[1], e.ts, current[2], i))
            current = None
    if current is not None:
        spans.append(Focus(current[0], current[1], None, current[2], None))
    return spans


def focus_after(spans: list[Focus], index: int) -> str:
    """The sku in focus just after event `index` ("" if none)."""
    for span in spans:
        if span.first <= index and (span.last is None or index < span.last):
            return span.sku
    return ""


@dataclass(frozen=True)
class Settle:
    """An order.paid or order.cancelled that settled an order placed before it."""

    index: int
    ts: int
    skus: tuple[str, ...]
    paid: bool


def settles(events: list[ViewerEvent]) -> list[Settle]:
    """Payments and cancels that count: of an order placed earlier and not yet settled (a
    repeat, or a payment after a cancel, changes nothing)."""
    open_orders: dict[str, tuple[str, ...]] = {}
    out: list[Settle] = []
    for i, e in enumerate(events):
        if isinstance(e, OrderPlaced):
            open_orders[e.order_id] = tuple(item.sku for item in e.items)
        elif isinstance(e, OrderPaid | OrderCancelled) and e.order_id in open_orders:
            out.append(Settle(i, e.ts, open_orders.pop(e.order_id), isinstance(e, OrderPaid)))
    return out


def first_placed(events: list[ViewerEvent]) -> dict[str, int]:
    """sku -> the earliest order.placed holding it (cancelled or not)."""
    out: dict[str, int] = {}
    for e in events:
        if isinstance(e, OrderPlaced):
            for item in e.items:
                out[item.sku] = min(out.get(item.sku, e.ts), e.ts)
    return out


def first_paid(events: list[ViewerEvent]) -> dict[str, int]:
    """sku -> the earliest payment that settled an order holding it."""
    out: dict[str, int] = {}
    for s in settles(events):
        if s.paid:
            for sku in s.skus:
                out[sku] = min(out.get(sku, s.ts), s.ts)
    return out
