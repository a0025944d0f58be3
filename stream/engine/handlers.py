"""The viewer engine's event handlers: what each viewer or order event does to the
viewer's state (visits, presence, focus, carts, orders), its timers and its tags.

`EventHandlers` sits between `Timers` (timers.py), whose arming it calls, and
`ViewerEngine` (viewers.py), which dispatches each event to one `_on_*` method by type.
The tag helpers live here too: besides the handlers, only the end of a show writes tags.
"""

from __future__ import annotations

from stream.core.models import (
    CartAdded,
    Comment,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    ProductViewed,
    TagChange,
    ViewerEvent,
    ViewerJoined,
)
from stream.engine import tags as T
from stream.engine.effects import Effect
from stream.engine.nudges import CART, DWELL
from stream.engine.state import ViewerState, any_by, earliest, in_room
from stream.engine.tags import TagPlan
from stream.engine.timeline import RoomTimeline
from stream.engine.timers import Timers

# How long past the grace an absence is kept: a minute of margin for out-of-order events.
AWAY_KEPT_MS = 60_000


class EventHandlers(Timers):
    """Per-event changes to one viewer's state, timers and tags (and the tag helpers)."""

    # Set by ViewerEngine.__init__ and its rules setter; declared here for the type checker.
    grace_ms: int
    _tags: TagPlan
    _type_names: dict[type[ViewerEvent], str]

    # --- tags -----------------------------------------------------------------------------

    def _add_tag(self, s: ViewerState, room_id: str, viewer_id: str, tag: str, value: str,
                 ts: int, out: list[Effect]) -> None:
        values = s.tags.get(tag)
        if values is None:
            s.tags[tag] = [value]
        elif value in values:
            return
        elif tag in T.EXCLUSIVE:
            for old in values:
                out.append(TagChange(viewer_id=viewer_id, room_id=room_id, tag=tag, value=old,
                                     op="remove", ts=ts))
            values[:] = [value]
        else:
            values.append(value)
        out.append(TagChange(viewer_id=viewer_id, room_id=room_id, tag=tag, value=value,
                             op="add", ts=ts))

    def _remove_tag(self, s: ViewerState, room_id: str, viewer_id: str, tag: str, value: str,
                    ts: int, out: list[Effect]) -> None:
        values = s.tags.get(tag)
        if values is None or value not in values:
            return
        values.remove(value)
        if not values:
            del s.tags[tag]
        out.append(TagChange(viewer_id=viewer_id, room_id=room_id, tag=tag, value=value,
                             op="remove", ts=ts))

    def _watch_tags(self, s: ViewerState, room_id: str, viewer_id: str, ts: int,
                    out: list[Effect]) -> None:
        """Watch depth and high potential, both functions of watch time and visits."""
        # Heartbeats prove presence: an open visit counts up to the last event seen in it.
        watch = s.watched + (s.seen - s.joined if in_room(s) else 0)
        depth = self._tags.watch_depth(watch)
        held = s.tags.get(T.WATCH_DEPTH)
        if held is None or held[0] != depth:
            self._add_tag(s, room_id, viewer_id, T.WATCH_DEPTH, depth, ts, out)
        if (not s.potential_done and T.HIGH_POTENTIAL not in s.tags
                and not any_by(s.placed, ts - 1)  # at a tie the view goes first
                and self._tags.high_potential(watch, s.visits, ordered=False)):
            s.potential_done = True
            self._add_tag(s, room_id, viewer_id, T.HIGH_POTENTIAL, "true", ts, out)
            if s.placed:  # placed after ts, applied first (orders read ahead): removed as then
                self._remove_tag(s, room_id, viewer_id, T.HIGH_POTENTIAL, "true",
                                 min(s.placed.values()), out)

    # --- event handlers -----------------------------------------------------------------

    def _lapse(self, s: ViewerState, ts: int) -> None:
        """The open visit's last event is a timeout older than `ts`: it ended there, and the
        viewer went offline when the timeout passed (as the host's count has it)."""
        s.watched += s.seen - s.joined
        s.left = min(s.seen + self.presence_timeout_ms, ts - 1)  # before `ts` opens a visit
        if s.focus:
            self._disarm(s, DWELL, s.focus, ts)
            s.focus = ""

    def _open_visit(self, s: ViewerState, ts: int) -> None:
        if not in_room(s):
            since = s.left if s.joined >= 0 else 0  # away since the leave, or since ever
            # Older absences can no longer matter: every timer due then has been judged.
            old = ts - self.grace_ms - AWAY_KEPT_MS
            pairs = s.away or []
            away = [x for i in range(0, len(pairs), 2) if pairs[i + 1] >= old
                    for x in pairs[i:i + 2]]
            s.away = [*away, since, ts] if since < ts else away or None
        s.joined = s.seen = ts
        s.left = -1
        s.visits += 1

    def _presence(self, s: ViewerState, ts: int) -> None:
        if in_room(s):
            if ts > s.seen:
                s.seen = ts
        elif ts > s.left:
            # The join was lost, or the viewer is back after a leave or a timeout: this event
            # proves they are here, a new visit.
            self._open_visit(s, ts)

    def _on_presence(self, s: ViewerState, e: ViewerEvent, room: RoomTimeline,
                     out: list[Effect]) -> None:
        self._presence(s, e.ts)
        self._watch_tags(s, e.room_id, e.viewer_id, e.ts, out)

    def _on_joined(self, s: ViewerState, e: ViewerJoined, room: RoomTimeline,
                   out: list[Effect]) -> None:
        if in_room(s):  # joined again without leaving (app restarted): close at last proof
            s.watched += s.seen - s.joined
        self._open_visit(s, e.ts)
        s.source = e.source
        s.leader = e.leader_id or s.leader
        s.region = e.region or s.region
        if e.tz and e.tz != s.tz:
            s.tz_was, s.tz_at, s.tz = s.tz, e.ts, e.tz
        room_id, viewer_id, ts = e.room_id, e.viewer_id, e.ts
        self._add_tag(s, room_id, viewer_id, T.SOURCE, self._tags.source(e.source), ts, out)
        if e.leader_id:
            self._add_tag(s, room_id, viewer_id, T.LEADER, e.leader_id, ts, out)
        if e.returning is not None:
            s.returning = int(e.returning)
            value = "returning" if e.returning else "new"
            self._add_tag(s, room_id, viewer_id, T.VISITOR, value, ts, out)
        self._watch_tags(s, room_id, viewer_id, ts, out)

    def _on_left(self, s: ViewerState, e: ViewerEvent, room: RoomTimeline,
                 out: list[Effect]) -> None:
        if not in_room(s):
            return
        ts = e.ts
        s.watched += max(0, ts - s.joined)
        s.left = s.seen = ts
        if s.focus:
            self._disarm(s, DWELL, s.focus, ts)
            s.focus = ""
        self._watch_tags(s, e.room_id, e.viewer_id, ts, out)

    def _on_viewed(self, s: ViewerState, e: ProductViewed, room: RoomTimeline,
                   out: list[Effect]) -> None:
        ts = e.ts
        self._presence(s, ts)
        if s.focus != e.sku:  # re-viewing the product in focus keeps the dwell's start
            if s.focus:
                self._disarm(s, DWELL, s.focus, ts)
            s.focus, s.focus_since = e.sku, ts
            for rule in self._plan.dwell:
                self._arm(s, e.room_id, e.viewer_id, rule, e.sku, ts + rule.delay_ms)
        self._watch_tags(s, e.room_id, e.viewer_id, ts, out)

    def _on_interaction(self, s: ViewerState, e: ViewerEvent, room: RoomTimeline,
                        out: list[Effect]) -> None:
        self._presence(s, e.ts)
        value = T.INTERACTIONS[self._type_names[type(e)]]
        self._add_tag(s, e.room_id, e.viewer_id, T.INTERACTION, value, e.ts, out)
        self._watch_tags(s, e.room_id, e.viewer_id, e.ts, out)

    def _on_comment(self, s: ViewerState, e: Comment, room: RoomTimeline,
                    out: list[Effect]) -> None:
        self._on_interaction(s, e, room, out)
        for tag, value in self._tags.keyword_tags(e.text):
            self._add_tag(s, e.room_id, e.viewer_id, tag, value, e.ts, out)

    def _on_cart_added(self, s: ViewerState, e: CartAdded, room: RoomTimeline,
                       out: list[Effect]) -> None:
        self._presence(s, e.ts)
        if s.cart is None:
            s.cart = {}
        earliest(s.cart, e.sku, e.ts)
        self._arm_cart(s, e.room_id, e.viewer_id, e.sku, e.ts)
        self._watch_tags(s, e.room_id, e.viewer_id, e.ts, out)

    def _on_placed(self, s: ViewerState, e: OrderPlaced, room: RoomTimeline,
                   out: list[Effect]) -> None:
        room_id, viewer_id, ts = e.room_id, e.viewer_id, e.ts
        skus = [item.sku for item in e.items]
        if s.orders is None:
            s.orders = {}
        s.orders[e.order_id] = skus
        if s.placed is None:
            s.placed = {}
        for sku in skus:
            earliest(s.placed, sku, ts)
            self._arm_cart(s, room_id, viewer_id, sku, ts)
        self._add_tag(s, room_id, viewer_id, T.CONVERSION_NODE, T.conversion_node(room, ts),
                      ts, out)
        self._remove_tag(s, room_id, viewer_id, T.HIGH_POTENTIAL, "true", ts, out)

    def _on_paid(self, s: ViewerState, e: OrderPaid, room: RoomTimeline,
                 out: list[Effect]) -> None:
        skus = s.orders.pop(e.order_id, None) if s.orders else None  # settled: forget it
        if skus is None:
            return  # never placed here (unknown_order), or a repeat of a settled order
        if not s.orders:
            s.orders = None
        if s.paid is None:
            s.paid = {}
        for sku in skus:
            earliest(s.paid, sku, e.ts)
            self._disarm(s, CART, sku, e.ts)
        for value in (T.CART_UNPAID, T.PAYMENT_FAILED):
            self._remove_tag(s, e.room_id, e.viewer_id, T.DROP_OFF, value, e.ts, out)

    def _on_cancelled(self, s: ViewerState, e: OrderCancelled, room: RoomTimeline,
                      out: list[Effect]) -> None:
        # A "pay now" reminder for an order the viewer just cancelled is the seed-002 pitfall.
        skus = s.orders.pop(e.order_id, ()) if s.orders else ()  # settled: forget it
        if not s.orders:
            s.orders = None
        for sku in skus:
            self._disarm(s, CART, sku, e.ts)

    def _on_payment_failed(self, s: ViewerState, e: OrderPaymentFailed, room: RoomTimeline,
                           out: list[Effect]) -> None:
        self._add_tag(s, e.room_id, e.viewer_id, T.DROP_OFF, T.PAYMENT_FAILED, e.ts, out)


__all__ = ["EventHandlers"]
