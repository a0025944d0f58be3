"""A past broadcast replayed through the pure engine: what rules would have decided.

`livecommerce rules backtest` reads a room's input events (from Kafka or a file) and
calls `backtest` here, once under the running rules and once under the candidate ones.
Nothing here does I/O: the same events and rules always give the same outcome.

How a replay sees the show, as the live engine does (`stream.worker.engagement`):
- the room's timeline (segments, pins, products, start and end) folded from its host
  events; the live engine learns it as the show goes, the replay knows it whole;
- stock levels by event time, from the show's own stock and order events through the
  inventory's rules (`stream.engine.stockmodel`);
- viewer and order events in event-time order (ties in the order given: the viewer
  topic's before the order topic's, then by offset), once each by event id;
- timers held `grace_ms` past their due time and below the inputs' watermark
  (`stream.engine.watermark`), and after the last event the clock moved on to `until`
  (default: the end of the show plus the longest trigger delay of the rules and the
  grace, so off-air reminders after the show are decided too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    Event,
    HostEvent,
    Nudge,
    StockSet,
    ViewerEvent,
)
from stream.engine.effects import Effect, Suppressed
from stream.engine.rules import Rules
from stream.engine.state import PRESENCE_TIMEOUT_MS
from stream.engine.stock import StockBook
from stream.engine.stockmodel import StockModel
from stream.engine.timeline import RoomTimeline
from stream.engine.viewers import ViewerEngine


class RuleOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One rule over one broadcast: what it sent, held out and suppressed by reason."""

    rule_id: str
    sent: int  # shown (treatment)
    held_out: int  # decided for the holdout arm, never shown
    suppressed: dict[str, int]  # reason -> count, holdout included (as the metrics JSON)


class Broadcast(msgspec.Struct, frozen=True, kw_only=True):
    broadcast_id: str
    started_at: int | None
    ended_at: int | None


def broadcast_id(room_id: str, started_at: int | None) -> str:
    """A broadcast's id: the room and the event time it started (ms)."""
    return f"{room_id}@{started_at or 0}"


def broadcasts(events: Iterable[Event], *, room_id: str) -> list[Broadcast]:
    """The room's broadcasts in the log, oldest first (one per broadcast.started)."""
    starts = sorted({e.ts for e in events
                     if isinstance(e, BroadcastStarted) and e.room_id == room_id})
    ends = sorted({e.ts for e in events
                   if isinstance(e, BroadcastEnded) and e.room_id == room_id})
    out = []
    for i, start in enumerate(starts):
        following = starts[i + 1] if i + 1 < len(starts) else None
        end = next((t for t in ends if t >= start and (following is None or t < following)),
                   None)
        out.append(Broadcast(broadcast_id=broadcast_id(room_id, start), started_at=start,
                             ended_at=end))
    return out


def select(events: Sequence[Event], *, room_id: str, broadcast: str | None = None,
           ) -> tuple[Broadcast, list[Event], int | None]:
    """One broadcast of the room (default the latest): its events, from the end of the
    one before (warm-up included) up to the start of the next, and that earlier end.
    Events up to it still move the stock (it carries over); `replay(since=...)` uses
    them for nothing else. Raises ValueError naming the broadcast if it is not there."""
    mine = [e for e in events if e.room_id == room_id]
    known = broadcasts(mine, room_id=room_id)
    if not known:
        if broadcast is not None:
            raise ValueError(f"broadcast: {broadcast!r} not in the log of room {room_id!r} "
                             "(no broadcast.started)")
        return Broadcast(broadcast_id=broadcast_id(room_id, None), started_at=None,
                         ended_at=None), mine, None
    chosen = known[-1] if broadcast is None else next(
        (b for b in known if b.broadcast_id == broadcast), None)
    if chosen is None:
        ids = ", ".join(b.broadcast_id for b in known)
        raise ValueError(f"broadcast: {broadcast!r} not in the log of room {room_id!r} "
                         f"(known: {ids})")
    i = known.index(chosen)
    since = known[i - 1].ended_at if i else None
    until = known[i + 1].started_at if i + 1 < len(known) else None
    return chosen, [e for e in mine if until is None or e.ts < until], since


def replay(events: Iterable[Event], *, room_id: str, rules: Rules, grace_ms: int = 0,
           since: int | None = None, until: int | None = None,
           presence_timeout_ms: int = PRESENCE_TIMEOUT_MS) -> list[Effect]:
    """Every effect the engine decides for the room's events under `rules` (pure).

    Events at or before `since` (an earlier broadcast) only move the stock and name
    products; `until` is where the clock stops after the last event."""
    seen: set[str] = set()
    ordered: list[Event] = []
    for e in events:
        if e.room_id == room_id and e.event_id not in seen:
            seen.add(e.event_id)
            ordered.append(e)
    ordered.sort(key=_ts)  # stable: ties keep the order given
    room = RoomTimeline(room_id=room_id)
    model, book = StockModel(), StockBook()
    for e in ordered:
        before = since is not None and e.ts <= since
        if isinstance(e, HostEvent) and (not before or isinstance(e, StockSet)):
            room.observe(e)
        for sku, ts, available, version in model.apply(e):
            book.observe(room_id, sku, ts, available, version)
    engine = ViewerEngine(rules, grace_ms=grace_ms, stock=book,
                          presence_timeout_ms=presence_timeout_ms)
    out: list[Effect] = []
    shown = [e for e in ordered if isinstance(e, ViewerEvent)
             and (since is None or e.ts > since)]
    for e in shown:
        out += engine.apply(e, room)
    if shown or room.ended_at is not None:
        if until is None:
            longest = max((r.trigger.seconds for r in rules.nudges
                           if hasattr(r.trigger, "seconds")), default=0)
            last = room.ended_at if room.ended_at is not None else shown[-1].ts
            until = last + longest * 1000 + 2 * grace_ms + 1
        out += engine.advance(until, {room_id: room}, drained=True)  # no input holds: all read
    return out


def outcomes(effects: Iterable[Effect], *, rules: Rules | None = None) -> list[RuleOutcome]:
    """Per rule (every rule of `rules`, and any other that decided something), sorted."""
    sent: Counter[str] = Counter()
    held: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = {}
    for e in effects:
        if isinstance(e, Nudge):
            (sent if e.variant == "treatment" else held)[e.rule_id] += 1
        elif isinstance(e, Suppressed):
            reasons.setdefault(e.rule_id, Counter())[e.reason] += 1
    ids = set(sent) | set(held) | set(reasons)
    if rules is not None:
        ids |= {r.id for r in rules.nudges if r.enabled}
    return [RuleOutcome(rule_id=r, sent=sent[r], held_out=held[r],
                        suppressed=dict(sorted(reasons.get(r, Counter()).items())))
            for r in sorted(ids)]


def _ts(event: Event) -> int:
    return event.ts
