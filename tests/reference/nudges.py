"""Which nudges must fire for one viewer, rule aspect by rule aspect.

1. Candidates per trigger kind: (due, rule, sku) a trigger asks for.
2. At each instant, the viewer's candidates are judged in rank order (priority, then file
   order, then sku); the first one that is not blocked fires, as of its due time:
   exits, quiet hours, the cap per broadcast, the cooldown and the hourly cap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from zoneinfo import ZoneInfo

from stream.core.models import CartAdded, Nudge, OrderPlaced, ViewerEvent, ViewerJoined
from stream.engine.rules import (
    ON_AIR_CHANNELS,
    CartUnpaidTrigger,
    DwellTrigger,
    EventCountTrigger,
    NudgeRule,
    Rules,
)

from .room import Room
from .viewer import (
    After,
    Focus,
    Visit,
    first_paid,
    first_placed,
    focus_after,
    focus_spans,
    present_at,
    settles,
)

HOUR_MS = 3_600_000
# The zone of a viewer who never said theirs: the platform's home market.
DEFAULT_TZ = "Asia/Shanghai"


@dataclass(frozen=True)
class Candidate:
    due: int
    order: int  # the rule's place in the file
    rule: NudgeRule
    sku: str  # "" for none


# --- 1. triggers ---------------------------------------------------------------------------

def dwell(rule: NudgeRule, order: int, spans: list[Focus]) -> list[Candidate]:
    """A card open `seconds` with the focus not broken by the due time."""
    assert isinstance(rule.trigger, DwellTrigger)
    delay = rule.trigger.seconds * 1000
    return [Candidate(s.since + delay, order, rule, s.sku) for s in spans
            if s.until is None or s.since + delay < s.until]


def cart_unpaid(rule: NudgeRule, order: int, events: list[ViewerEvent]) -> list[Candidate]:
    """Each cart.added, and each line of an order.placed, asks for a reminder `seconds`
    later. A payment of the sku at or before that time, or a cancel after the ask and by
    that time, takes it back; an ask while an earlier one for the sku is still to come
    adds nothing."""
    assert isinstance(rule.trigger, CartUnpaidTrigger)
    delay = rule.trigger.seconds * 1000
    asks: list[tuple[int, int, str]] = []  # (index, ts, sku)
    for i, e in enumerate(events):
        if isinstance(e, CartAdded):
            asks.append((i, e.ts, e.sku))
        elif isinstance(e, OrderPlaced):
            asks += [(i, e.ts, item.sku) for item in e.items]
    done = settles(events)
    kept: list[tuple[int, str]] = []  # (due, sku)
    for index, ts, sku in asks:
        due = ts + delay
        if any(sku in s.skus and s.ts <= due and (s.paid or s.index > index) for s in done):
            continue
        if any(k_sku == sku and k_due >= ts for k_due, k_sku in kept):
            continue
        kept.append((due, sku))
    return [Candidate(due, order, rule, sku) for due, sku in kept]


def event_count(rule: NudgeRule, order: int, events: list[ViewerEvent],
                spans: list[Focus]) -> list[Candidate]:
    """The `count`-th event of the type inside `window_s` fires at its ts, about the
    product then in focus; counting starts over after it."""
    trigger = rule.trigger
    assert isinstance(trigger, EventCountTrigger)
    window = trigger.window_s * 1000
    out: list[Candidate] = []
    recent: list[int] = []
    for i, e in enumerate(events):
        if e.__struct_config__.tag != trigger.event:
            continue
        recent = [t for t in recent if t > e.ts - window] + [e.ts]
        if len(recent) >= trigger.count:
            out.append(Candidate(e.ts, order, rule, focus_after(spans, i)))
            recent = []
    return out


def candidates(rules: Rules, events: list[ViewerEvent], after: list[After]) -> list[Candidate]:
    spans = focus_spans(events, after)
    out: list[Candidate] = []
    for order, rule in enumerate(rules.nudges):
        if not rule.enabled:
            continue
        if isinstance(rule.trigger, DwellTrigger):
            out += dwell(rule, order, spans)
        elif isinstance(rule.trigger, CartUnpaidTrigger):
            out += cart_unpaid(rule, order, events)
        else:
            out += event_count(rule, order, events, spans)
    return out


# --- 2. judging at the due time ---------------------------------------------------------------

def exited(c: Candidate, *, placed: dict[str, int], paid: dict[str, int],
           visits: list[Visit], room: Room) -> bool:
    """Any enabled exit that holds at the due time. For a cart reminder "ordered" means
    paid (the order is what it reminds of); otherwise an order placed."""
    book = paid if isinstance(c.rule.trigger, CartUnpaidTrigger) else placed
    ordered = (book.get(c.sku, c.due + 1) <= c.due if c.sku
               else any(t <= c.due for t in book.values()))
    ended = room.ended_at is not None and room.ended_at <= c.due
    x = c.rule.exit
    return ((x.ordered_sku and ordered) or (x.left_room and not present_at(visits, c.due))
            or (x.broadcast_ended and ended))


def zone_at(events: list[ViewerEvent], ts: int) -> str:
    """The zone of the latest join at or before `ts` that gave one."""
    zones = [e.tz for e in events if isinstance(e, ViewerJoined) and e.tz and e.ts <= ts]
    return zones[-1] if zones else DEFAULT_TZ


def quiet(c: Candidate, zone: str) -> bool:
    """Off-air channels only; [start, end) in the viewer's local time, may wrap midnight."""
    q = c.rule.quiet_hours
    if q is None or c.rule.channel in ON_AIR_CHANNELS:
        return False
    local = datetime.fromtimestamp(c.due / 1000, ZoneInfo(zone))
    now = local.hour * 60 + local.minute
    start = int(q.start[:2]) * 60 + int(q.start[3:])
    end = int(q.end[:2]) * 60 + int(q.end[3:])
    return start <= now < end if start <= end else (now >= start or now < end)


def capped(c: Candidate, fires: list[tuple[int, str]], per_hour: int) -> bool:
    """Cap per broadcast, cooldown since the rule's last fire, and the hourly cap over all
    rules; `fires` are the viewer's earlier fires (ts, rule id), holdout ones included."""
    mine = [t for t, rule_id in fires if rule_id == c.rule.id]
    if len(mine) >= c.rule.cap_per_broadcast:
        return True
    if mine and c.due - mine[-1] < c.rule.cooldown_s * 1000:
        return True
    return sum(1 for t, _ in fires if t > c.due - HOUR_MS) >= per_hour


def variant(viewer_id: str, rule_id: str, share: float) -> str:
    """Holdout by (viewer, rule): sha256 of "viewer|rule", its first 8 bytes as a fraction
    of 2**64, below the share."""
    if share <= 0:
        return "treatment"
    digest = hashlib.sha256(f"{viewer_id}|{rule_id}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:8], "big") / 2**64 < share else "treatment"


def message(template: str, product: tuple[str, float | None] | None) -> str:
    """{product_name} and {price} filled in; {remaining} is the sender's."""
    if product is None:
        return template
    name, price = product
    text = template.replace("{product_name}", name)
    if price is not None:
        text = text.replace("{price}", f"{price:.2f}".rstrip("0").rstrip("."))
    return text


def nudges(rules: Rules, room: Room, viewer_id: str, events: list[ViewerEvent],
           visits: list[Visit], after: list[After]) -> list[Nudge]:
    placed, paid = first_placed(events), first_paid(events)
    fires: list[tuple[int, str]] = []
    out: list[Nudge] = []
    ranked = sorted(candidates(rules, events, after),
                    key=lambda c: (c.due, c.rule.priority, c.order, c.sku))
    for due, group in groupby(ranked, key=lambda c: c.due):
        zone = zone_at(events, due)
        for c in group:
            if (exited(c, placed=placed, paid=paid, visits=visits, room=room)
                    or quiet(c, zone) or capped(c, fires, rules.limits.per_viewer_per_hour)):
                continue
            fires.append((due, c.rule.id))
            out.append(Nudge(
                viewer_id=viewer_id, room_id=room.room_id, rule_id=c.rule.id,
                sku=c.sku or None,
                message=message(c.rule.message, room.products.get(c.sku) if c.sku else None),
                variant=variant(viewer_id, c.rule.id, c.rule.holdout),  # type: ignore[arg-type]
                channel=c.rule.channel, ts=due))
            break  # one nudge per viewer and instant: the best one that may
    return out
