"""One list of what an event type touches: every registry keyed by event type handles
each type of `stream.core.models`, or names it here as deliberately ignored.

Adding an event type (the checklist is in `stream/core/models.py`) fails this test until
each registry below has made its choice, so no type is silently dropped by one of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.core import counters
from stream.core.models import EVENT_TYPES, Event, HostEvent
from stream.engine.rules import load_dir
from stream.engine.viewers import RoomTimeline, ViewerEngine
from stream.local import showplan
from stream.store import presence

ALL = set(EVENT_TYPES)
HOST = {tag for tag, cls in EVENT_TYPES.items() if issubclass(cls, HostEvent)}
RULES = Path(__file__).resolve().parents[2] / "rules"


def _tags(classes: object) -> set[str]:
    return {cls.__struct_config__.tag for cls in classes}  # type: ignore[attr-defined]


def _simulated() -> dict[str, Event]:
    """One event of each type the simulator's default show sends."""
    plan = showplan.plan_for(room_id="r", viewers=300, duration_s=600, speed=20, seed=1)
    return {e.__struct_config__.tag: e for _, e in showplan.broadcast(plan)}


def _folded() -> set[str]:
    """Host event types that change a room's timeline when folded into it."""
    changed = set()
    for tag, event in _simulated().items():
        if tag in HOST:
            room = RoomTimeline(room_id="r")
            before = repr(room)
            room.observe(event)  # type: ignore[arg-type]
            if repr(room) != before:
                changed.add(tag)
    return changed


# registry -> (the types it handles, the types it deliberately leaves alone, and why).
REGISTRIES = {
    # Host events reach the engine through the room's timeline, not a handler.
    "viewer engine handlers": (
        lambda: _tags(ViewerEngine(load_dir(RULES))._handlers), HOST),
    "room timeline fold": (_folded, ALL - HOST),
    # Once-per-record counters: events with nothing to count per minute are left out;
    # orders are counted by the inventory script, once per order id, not here.
    "per-event counters": (lambda: _tags(counters._COUNTERS), {
        "viewer.heartbeat", "product.viewed", "interaction.share", "fan.joined",
        "cart.added", "order.placed", "order.paid", "order.cancelled", *HOST}),
    # Presence keeps visits (every app event proves presence), carts and failed payments
    # per viewer; payments and cancels say nothing about whether a viewer is in the room.
    "presence": (lambda: _tags(presence.HANDLED), {"order.paid", "order.cancelled", *HOST}),
    # The simulator's show sends every type but a cancel (its buyers pay or fail).
    "simulator": (lambda: set(_simulated()), {"order.cancelled"}),
}


@pytest.mark.parametrize("name", sorted(REGISTRIES))
def test_every_event_type_is_handled_or_ignored_on_purpose(name: str) -> None:
    handled_of, ignored = REGISTRIES[name]
    handled = handled_of()
    assert handled <= ALL, f"{name} handles types that do not exist: {handled - ALL}"
    assert not handled & ignored, f"{name} handles types listed as ignored: {handled & ignored}"
    assert ALL - handled - ignored == set(), f"{name} neither handles nor ignores these"


def test_the_registries_see_something() -> None:
    """An empty registry would make the test above pass for the wrong reason."""
    for name, (handled_of, _) in REGISTRIES.items():
        assert handled_of(), name
