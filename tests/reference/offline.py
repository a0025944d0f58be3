"""The engine run offline over a simulated show, for the model to be compared with.

This module (not the model) imports the engine: it is the thing under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stream.core.models import Event, FollowUp, HostEvent, Nudge, OrderEvent, TagChange, ViewerEvent
from stream.engine.rules import Rules
from stream.engine.timeline import RoomTimeline
from stream.engine.viewers import ViewerEngine

DAY_MS = 86_400_000


def processing_order(events: Sequence[Event]) -> list[ViewerEvent]:
    """Viewer events as a worker applies them: event time, the viewer topic first at a tie,
    then arrival."""
    indexed = [(e.ts, isinstance(e, OrderEvent), i, e) for i, e in enumerate(events)
               if isinstance(e, ViewerEvent)]
    return [e for *_, e in sorted(indexed, key=lambda x: x[:3])]


def orders_ahead(lead_ms: int) -> Callable[[Sequence[Event]], list[ViewerEvent]]:
    """A processing order with the order topic read `lead_ms` of event time ahead of the
    viewer topic (the oracle flake's skew): each order goes in once the views have reached
    its time minus the lead. Each topic stays in its own order."""
    def order(events: Sequence[Event]) -> list[ViewerEvent]:
        merged = processing_order(events)
        views = [e for e in merged if not isinstance(e, OrderEvent)]
        pending = [e for e in merged if isinstance(e, OrderEvent)]
        out: list[ViewerEvent] = []
        i = 0
        for view in views:
            while i < len(pending) and pending[i].ts - lead_ms <= view.ts:
                out.append(pending[i])
                i += 1
            out.append(view)
        return out + pending[i:]
    return order


def run_engine(rules: Rules, events: Sequence[Event], *, grace_ms: int = 3000,
               engine: type[ViewerEngine] = ViewerEngine,
               order: Callable[[Sequence[Event]], list[ViewerEvent]] = processing_order,
               ) -> tuple[list[Nudge], list[TagChange], list[FollowUp]]:
    """Host events first (the worker's room log is ahead of the viewers), then each viewer
    event, then time run on a day past the last event so every timer is judged."""
    rooms: dict[str, RoomTimeline] = {}
    for e in sorted((e for e in events if isinstance(e, HostEvent)), key=lambda e: e.ts):
        rooms.setdefault(e.room_id, RoomTimeline(room_id=e.room_id)).observe(e)
    eng = engine(rules, grace_ms=grace_ms)
    effects = []
    for e in order(events):
        effects += eng.apply(e, rooms.setdefault(e.room_id, RoomTimeline(room_id=e.room_id)))
    effects += eng.advance(max(e.ts for e in events) + DAY_MS, rooms)
    return ([e for e in effects if isinstance(e, Nudge)],
            [e for e in effects if isinstance(e, TagChange)],
            [e for e in effects if isinstance(e, FollowUp)])
