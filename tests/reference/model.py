"""The reference model's entry: a room's host events and viewer events in, the nudges, tag
records and follow-ups the rules call for out.

What it assumes (say so when the engine's semantics change):
- One broadcast per room; its end is the last broadcast.ended.
- Each viewer's events come in processing order: event time, then the viewer topic before
  the order topic, then arrival. Everything is judged as of event time.
- The end of the show is judged as of its ts, after the viewer's events at or before it;
  a viewer with no visit by then gets the end's effects after their first visit.
- A viewer is in the room from a join (or a presence event while out and after the last
  leave) until a leave, or until their newest app event is the presence timeout (60 s)
  old; the engine learns of a timeout at the viewer's next app event (see viewer.visits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from stream.core.models import (
    CartAdded,
    FollowUp,
    HostEvent,
    Nudge,
    OrderPlaced,
    TagChange,
    ViewerEvent,
)
from stream.engine.rules import Rules

from . import tags as T
from .nudges import nudges
from .room import Room, room_of
from .viewer import After, first_paid, visits


@dataclass
class Expected:
    nudges: list[Nudge] = field(default_factory=list)
    tags: list[TagChange] = field(default_factory=list)  # in each viewer's order
    followups: list[FollowUp] = field(default_factory=list)


def end_point(room: Room, events: list[ViewerEvent],
              after: list[After]) -> tuple[float, int] | None:
    """Where the end of the show sits among a viewer's events: (position, ts)."""
    if room.ended_at is None:
        return None
    before = [i for i, e in enumerate(events) if e.ts <= room.ended_at]
    if before and after[before[-1]].visits:
        return before[-1] + 0.9, room.ended_at
    later = next((i for i, a in enumerate(after) if a.visits), None)
    return None if later is None else (later + 0.9, room.ended_at)


def followup(rules: Rules, room: Room, viewer_id: str, events: list[ViewerEvent],
             end: tuple[float, int] | None) -> list[FollowUp]:
    """One per viewer at the end: ordered (paid by the end), cart_unpaid (carted or ordered
    by the end), else watched_only; the first rule of the segment in the file."""
    if end is None:
        return []
    ts = end[1]
    carted = any(isinstance(e, CartAdded | OrderPlaced) and e.ts <= ts for e in events)
    paid = any(t <= ts for t in first_paid(events).values())
    segment = "ordered" if paid else "cart_unpaid" if carted else "watched_only"
    rule = next((f for f in rules.followups if f.segment == segment), None)
    if rule is None:
        return []
    return [FollowUp(viewer_id=viewer_id, room_id=room.room_id, segment=segment,
                     action=rule.action, due_at=ts + rule.after_s * 1000)]


def tag_records(rules: Rules, room: Room, viewer_id: str, events: list[ViewerEvent],
                after: list[After], end: tuple[float, int] | None) -> list[TagChange]:
    points = T.watch_points(events, after, end)
    records = (T.source(rules.tags, events) + T.leader(events) + T.visitor(events)
               + T.interactions(events) + T.keywords(rules.tags, events)
               + T.conversion_node(room, events) + T.watch_depth(rules.tags, points)
               + T.high_potential(rules.tags, events, points)
               + T.drop_off(events, room, end))
    return [TagChange(viewer_id=viewer_id, room_id=room.room_id, tag=tag, value=value,
                      op=op, ts=ts)  # type: ignore[arg-type]
            for _, tag, value, op, ts in sorted(records, key=lambda r: r[0])]


def expect(rules: Rules, hosts: Iterable[HostEvent],
           viewer_events: Iterable[ViewerEvent]) -> Expected:
    """Everything the rules call for. `viewer_events` in processing order (see above)."""
    hosts = list(hosts)
    by_viewer: dict[tuple[str, str], list[ViewerEvent]] = defaultdict(list)
    for e in viewer_events:
        by_viewer[e.room_id, e.viewer_id].append(e)
    rooms: dict[str, Room] = {}
    out = Expected()
    for (room_id, viewer_id), events in sorted(by_viewer.items()):
        room = rooms.get(room_id) or rooms.setdefault(room_id, room_of(room_id, hosts))
        seen, after = visits(events)
        end = end_point(room, events, after)
        out.nudges += nudges(rules, room, viewer_id, events, seen, after)
        out.tags += tag_records(rules, room, viewer_id, events, after, end)
        out.followups += followup(rules, room, viewer_id, events, end)
    return out
