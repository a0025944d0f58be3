"""The tag records one viewer must get, one function per tag kind.

Each function returns (position, tag, value, op, ts): `position` orders the records of
one viewer as the viewer's events do (the record of event i sorts at i; the end of the
show sorts after the events at or before it). Exclusive tags hold one value: a new one
is a remove of the old and an add.
"""

from __future__ import annotations

from stream.core.models import (
    CartAdded,
    CartClicked,
    Comment,
    FanJoined,
    Like,
    OrderPaymentFailed,
    OrderPlaced,
    Share,
    ViewerEvent,
    ViewerJoined,
    ViewerLeft,
)
from stream.engine.rules import TagFile

from .room import Room
from .viewer import PRESENCE, After, first_paid, settles

Record = tuple[float, str, str, str, int]  # (position, tag, value, op, ts)

INTERACTIONS = {Like: "liked", Comment: "commented", Share: "shared",
                CartClicked: "cart_clicked", FanJoined: "fan_club"}


def exclusive(tag: str, values: list[tuple[float, str, int]]) -> list[Record]:
    """(position, value, ts) in order -> the records of a tag holding one value at a time."""
    out: list[Record] = []
    held: str | None = None
    for position, value, ts in values:
        if value == held:
            continue
        if held is not None:
            out.append((position, tag, held, "remove", ts))
        out.append((position, tag, value, "add", ts))
        held = value
    return out


def source(tags: TagFile, events: list[ViewerEvent]) -> list[Record]:
    """Each join: the brand's own sources are private, every other public."""
    return exclusive("source", [
        (i, "private" if e.source in tags.private_sources else "public", e.ts)
        for i, e in enumerate(events) if isinstance(e, ViewerJoined)])


def leader(events: list[ViewerEvent]) -> list[Record]:
    return exclusive("leader", [(i, e.leader_id, e.ts) for i, e in enumerate(events)
                                if isinstance(e, ViewerJoined) and e.leader_id])


def visitor(events: list[ViewerEvent]) -> list[Record]:
    return exclusive("visitor", [
        (i, "returning" if e.returning else "new", e.ts) for i, e in enumerate(events)
        if isinstance(e, ViewerJoined) and e.returning is not None])


def interactions(events: list[ViewerEvent]) -> list[Record]:
    """The first of each kind of interaction adds its value."""
    out: list[Record] = []
    seen: set[str] = set()
    for i, e in enumerate(events):
        value = INTERACTIONS.get(type(e))  # type: ignore[call-overload]
        if value is not None and value not in seen:
            seen.add(value)
            out.append((i, "interaction", value, "add", e.ts))
    return out


def keywords(tags: TagFile, events: list[ViewerEvent]) -> list[Record]:
    """The first comment holding any phrase of a keyword rule adds its (tag, value)."""
    out: list[Record] = []
    seen: set[tuple[str, str]] = set()
    for i, e in enumerate(events):
        if not isinstance(e, Comment):
            continue
        for rule in tags.keyword:
            key = (rule.tag, rule.value)
            if key not in seen and any(p in e.text for p in rule.phrases):
                seen.add(key)
                out.append((i + 0.5, rule.tag, rule.value, "add", e.ts))
    return out


def conversion_node(room: Room, events: list[ViewerEvent]) -> list[Record]:
    """Each order placed adds `segment:pinned` on air at its ts (`none`, `-` if nothing)."""
    out: list[Record] = []
    seen: set[str] = set()
    for i, e in enumerate(events):
        if isinstance(e, OrderPlaced):
            value = f"{room.segment_at(e.ts) or 'none'}:{room.pinned_at(e.ts) or '-'}"
            if value not in seen:
                seen.add(value)
                out.append((i, "conversion_node", value, "add", e.ts))
    return out


def watch_points(events: list[ViewerEvent], after: list[After],
                 end: tuple[float, int] | None) -> list[tuple[float, int, int, int]]:
    """(position, ts, watch ms, visits) wherever watch tags are looked at: joins, leaves
    that close a visit, presence events, and the end of the show."""
    points = [(float(i), e.ts, after[i].watch, after[i].visits) for i, e in enumerate(events)
              if isinstance(e, (ViewerJoined, *PRESENCE))
              or (isinstance(e, ViewerLeft) and after[i].closed)]
    if end is not None:
        position, ts = end
        i = int(position)
        points.append((position, ts, after[i].watch, after[i].visits))
    return sorted(points)


def watch_depth(tags: TagFile, points: list[tuple[float, int, int, int]]) -> list[Record]:
    """The first bucket whose below_s is above the watch time (the last one if none)."""
    def bucket(watch_ms: int) -> str:
        for b in tags.watch_depth:
            if b.below_s is None or watch_ms < b.below_s * 1000:
                return b.value
        return tags.watch_depth[-1].value

    return exclusive("watch_depth", [(p, bucket(w), ts) for p, ts, w, _ in points])


def high_potential(tags: TagFile, events: list[ViewerEvent],
                   points: list[tuple[float, int, int, int]]) -> list[Record]:
    """Added at the first watch point with long watch or repeated visits and no order yet;
    removed by the first order placed after it."""
    hp = tags.high_potential
    first_order = next((i for i, e in enumerate(events) if isinstance(e, OrderPlaced)), None)
    for p, ts, watch, n in points:
        if first_order is not None and first_order < p:
            return []
        if watch >= hp.min_watch_s * 1000 or n >= hp.min_visits:
            out: list[Record] = [(p + 0.2, "high_potential", "true", "add", ts)]
            if first_order is not None:
                e = events[first_order]
                out.append((first_order + 0.5, "high_potential", "true", "remove", e.ts))
            return out
    return []


def drop_off(events: list[ViewerEvent], room: Room,
             end: tuple[float, int] | None) -> list[Record]:
    """payment_failed on a failed payment; cart_unpaid at the end if something was carted
    or ordered and nothing paid by then; a payment of an order removes both."""
    marks: list[tuple[float, str, int]] = [
        (i, "payment_failed", e.ts) for i, e in enumerate(events)
        if isinstance(e, OrderPaymentFailed)]
    pays = [(s.index + 0.5, "paid", s.ts) for s in settles(events) if s.paid]
    if end is not None and room.ended_at is not None:
        end_ts = room.ended_at
        carted = any(isinstance(e, CartAdded | OrderPlaced) and e.ts <= end_ts for e in events)
        paid = any(t <= end_ts for t in first_paid(events).values())
        if carted and not paid:
            marks.append((end[0] + 0.3, "cart_unpaid", end_ts))
    out: list[Record] = []
    held: list[str] = []
    for position, what, ts in sorted(marks + pays):
        if what == "paid":
            out += [(position, "drop_off", v, "remove", ts) for v in held]
            held = []
        elif what not in held:
            held.append(what)
            out.append((position, "drop_off", what, "add", ts))
    return out
