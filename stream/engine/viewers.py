"""The viewer engine: per-viewer state, event-time timers, nudges, tags and follow-ups.

Pure logic: events and time in, effects out. No Redis, no Kafka, no wall clock; the
worker feeds `apply` with each viewer/order event in partition order, calls `advance`
with its room clock, persists `export_dirty()` and hands blobs back to `restore`.

Time is event time only. A timer due at T fires with ts=T and is judged *as of T*:
its exit conditions look at the timestamps kept in the state (an order at T cancels
it, one at T+1 does not), and a disarming event (another product viewed, leaving,
paying) only removes timers due at or after its own ts. So the effects depend on the
events and not on when `advance` happens to be called, as long as no event arrives
with a ts at or below a time already advanced past. `grace_ms` holds every timer that
long after its due time, to absorb that much lateness (an order from the commerce
backend landing after the platform's heartbeats) without changing any result.

State per (room, viewer) is one `ViewerState` (stream/engine/state.py). Timers live in
the state as (due, rule, sku, kind); the engine's heap is only an index over them,
rebuilt by `restore`, and a heap entry counts only while its twin is still in the state
(disarming is a list removal; stale entries are skipped).

The engine is one object in three layers, each a class the next inherits, over the
fields set here in `__init__`: `Timers` (timers.py: arming, disarming, firing),
`EventHandlers` (handlers.py: what each event does, and the tags), and `ViewerEngine`
(this module: the API, the rooms' clocks, the states and the end of a show). What it
returns, `Effect`, is in effects.py.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping

from stream.core.models import (
    CartAdded,
    CartClicked,
    Comment,
    FanJoined,
    FollowUp,
    Like,
    OrderCancelled,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    ProductViewed,
    Share,
    TagChange,
    ViewerEvent,
    ViewerHeartbeat,
    ViewerJoined,
    ViewerLeft,
)
from stream.engine import tags as T
from stream.engine.effects import Effect
from stream.engine.handlers import EventHandlers
from stream.engine.nudges import NudgePlan
from stream.engine.rules import FollowUpRule, Rules
from stream.engine.state import (
    NEVER,
    PRESENCE_TIMEOUT_MS,
    ViewerState,
    any_by,
    decode_state,
    encode_state,
)
from stream.engine.stock import StockBook
from stream.engine.tags import TagPlan
from stream.engine.timeline import RoomTimeline
from stream.engine.timers import HeapEntry
from stream.engine.watermark import COMMERCE, PLATFORM, Watermarks

# --- the engine -------------------------------------------------------------------------


class ViewerEngine(EventHandlers):
    """All viewers of one partition: events and time in, effects out. Deterministic."""

    def __init__(self, rules: Rules, *, grace_ms: int = 0,
                 stock: StockBook | None = None,
                 presence_timeout_ms: int = PRESENCE_TIMEOUT_MS,
                 watermarks: Watermarks | None = None) -> None:
        self.grace_ms = grace_ms
        # Timers run up to the input furthest behind, not the newest event of either.
        self.watermarks = watermarks if watermarks is not None else Watermarks()
        self.presence_timeout_ms = presence_timeout_ms
        self.rules = rules
        # Stock levels by event time, shared by the worker's engines (read only here).
        self.stock = stock if stock is not None else StockBook()
        self._states: dict[str, dict[str, ViewerState]] = {}  # room -> viewer -> state
        self._rooms: dict[str, RoomTimeline] = {}  # latest timeline seen per room
        # Each room on its own time: one room's events never fire another's timers (the
        # same viewers in two shows of different hours must be judged by each show's clock).
        self._heaps: dict[str, list[HeapEntry]] = {}  # room -> its timers
        self._ends: dict[str, int] = {}  # room -> ended_at not yet processed
        self._ended: dict[str, str] = {}  # room -> broadcast id whose end was processed
        self._end_seen: dict[str, tuple[int | None, int]] = {}  # room -> (started, ended)
        self._dirty: set[tuple[str, str]] = set()
        # Handlers take (state, event, room, out); typed loosely as each wants its own event.
        self._handlers: dict[type[ViewerEvent], Callable[..., None]] = {
            ViewerJoined: self._on_joined,
            ViewerLeft: self._on_left,
            ViewerHeartbeat: self._on_presence,
            ProductViewed: self._on_viewed,
            Like: self._on_interaction,
            Comment: self._on_comment,
            Share: self._on_interaction,
            FanJoined: self._on_interaction,
            CartClicked: self._on_interaction,
            CartAdded: self._on_cart_added,
            OrderPlaced: self._on_placed,
            OrderPaid: self._on_paid,
            OrderCancelled: self._on_cancelled,
            OrderPaymentFailed: self._on_payment_failed,
        }
        self._type_names = {cls: str(cls.__struct_config__.tag) for cls in self._handlers}
        # The app's events prove presence (orders come from the commerce backend).
        self._proofs = {cls for cls in self._handlers if cls.role == "platform"}
        self._source = {cls: PLATFORM if cls.role == "platform" else COMMERCE
                        for cls in self._handlers}

    # --- rules (hot reload keeps all state; timers are judged by the rules at fire time) ---

    @property
    def rules(self) -> Rules:
        return self._rules

    @rules.setter
    def rules(self, rules: Rules) -> None:
        self._rules = rules
        self._plan = NudgePlan(rules)
        self._tags = TagPlan(rules.tags)
        self._followups: dict[str, FollowUpRule] = {}
        for f in rules.followups:
            self._followups.setdefault(f.segment, f)

    # --- the API ----------------------------------------------------------------------------

    def apply(self, event: ViewerEvent, room: RoomTimeline) -> list[Effect]:
        """One viewer or order event: first everything due before it, then its own effects."""
        out: list[Effect] = []
        self._see_room(room)
        self._apply(event, room, out)
        return out

    def apply_all(self, events: Iterable[ViewerEvent],
                  room_of: Callable[[str], RoomTimeline]) -> list[Effect]:
        """`apply` each event in turn (the batch form: one list of effects for all)."""
        out: list[Effect] = []
        rooms: dict[str, RoomTimeline] = {}
        for event in events:
            room = rooms.get(event.room_id)
            if room is None:
                room = rooms[event.room_id] = room_of(event.room_id)
                self._see_room(room)
            self._apply(event, room, out)
        return out

    def _apply(self, event: ViewerEvent, room: RoomTimeline, out: list[Effect]) -> None:
        ts, room_id = event.ts, event.room_id
        # Timers due at the watermark wait: an order at it may still come.
        limit = self.watermarks.heard(
            room_id, self._source.get(type(event), PLATFORM), ts) - self.grace_ms - 1
        heap = self._heaps.get(room_id)
        if (heap and heap[0][0] <= limit) or self._ends.get(room_id, NEVER) <= limit:
            self._run_until(room_id, limit, out)
        handler = self._handlers.get(type(event))
        if handler is None:
            return
        viewer_id = event.viewer_id
        s = self._state(room_id, viewer_id, room, ts, out)
        if (s.left < s.joined and ts - s.seen >= self.presence_timeout_ms
                and type(event) in self._proofs):
            self._lapse(s, ts)
        handler(s, event, room, out)
        if self._plan.counts:
            counting = self._plan.counts.get(self._type_names[type(event)])
            if counting:
                self._count(s, counting, room_id, viewer_id, ts)
        self._dirty.add((room_id, viewer_id))
        if (not s.followup_done and room_id in self._ended
                and self._ended[room_id] == room.broadcast_id):
            # A viewer first seen after the end was processed (a late or straggling event).
            self._end_viewer(s, room_id, viewer_id, room, out)

    def advance(self, now_ms: int | Mapping[str, int], rooms: Mapping[str, RoomTimeline],
                *, drained: bool = False) -> list[Effect]:
        """Fire every timer due at or before `now_ms` (in due order, with ts = due time) and
        every room end at or before it (follow-ups and end-of-show tags, once per viewer),
        as far as the inputs' watermark lets (`drained`: no input holds, all is read).
        `now_ms` is one time for every room, or each room's own (rooms not in it wait)."""
        out: list[Effect] = []
        for room in rooms.values():
            self._see_room(room)
        for room_id in sorted(self._heaps.keys() | self._ends.keys()):
            now = now_ms if isinstance(now_ms, int) else now_ms.get(room_id)
            if now is not None:
                now = self.watermarks.until(room_id, now, drained=drained)
                self._run_until(room_id, now - self.grace_ms, out)
        return out

    def export_dirty(self) -> dict[tuple[str, str], bytes]:
        """(room_id, viewer_id) -> msgpack state, for viewers changed since the last call."""
        blobs: dict[tuple[str, str], bytes] = {}
        for room_id, viewer_id in self._dirty:
            s = self._states.get(room_id, {}).get(viewer_id)
            if s is not None:
                blobs[room_id, viewer_id] = encode_state(s)
        self._dirty.clear()
        return blobs

    def restore(self, blobs: Mapping[tuple[str, str], bytes]) -> None:
        """Load states saved by `export_dirty` (after a restart); timers are rebuilt from them."""
        for (room_id, viewer_id), blob in blobs.items():
            s = decode_state(blob)
            self._states.setdefault(room_id, {})[viewer_id] = s
            for due, rule_id, sku, kind in s.timers or ():
                heapq.heappush(self._heaps.setdefault(room_id, []),
                               (due, room_id, viewer_id, rule_id, sku, kind))

    def state_bytes(self, room_id: str, viewer_id: str) -> int:
        s = self._states.get(room_id, {}).get(viewer_id)
        return 0 if s is None else len(encode_state(s))

    def tags_of(self, room_id: str, viewer_id: str) -> dict[str, list[str]]:
        """The tags a viewer holds now (a copy)."""
        s = self._states.get(room_id, {}).get(viewer_id)
        return {} if s is None else {k: list(v) for k, v in s.tags.items()}

    def newest(self) -> dict[str, int]:
        """Per room, the latest event time its viewers' states hold (a join, a leave, a
        proof of presence): where a restored partition's room clocks start."""
        return {room_id: max(max(s.seen, s.joined, s.left) for s in viewers.values())
                for room_id, viewers in self._states.items() if viewers}

    def forget(self, room_id: str) -> int:
        """Drop a finished room's viewers from memory (their last state is already exported)."""
        gone = self._states.pop(room_id, {})
        self._rooms.pop(room_id, None)
        self._ended.pop(room_id, None)
        self._end_seen.pop(room_id, None)
        self._ends.pop(room_id, None)
        self._heaps.pop(room_id, None)
        self.watermarks.forget(room_id)
        self._dirty = {k for k in self._dirty if k[0] != room_id}
        return len(gone)

    def __len__(self) -> int:
        return sum(len(v) for v in self._states.values())

    # --- time ---------------------------------------------------------------------------

    def _see_room(self, room: RoomTimeline) -> None:
        self._rooms[room.room_id] = room
        if room.ended_at is None:
            return
        seen = (room.started_at, room.ended_at)
        if self._end_seen.get(room.room_id) == seen:
            return  # the common case after the end: nothing new about this room
        self._end_seen[room.room_id] = seen
        if self._ended.get(room.room_id) != room.broadcast_id:
            self._ends[room.room_id] = room.ended_at

    def _run_until(self, room_id: str, limit: int, out: list[Effect]) -> None:
        """Fire the room's timers and its end due at or before `limit`, earliest first."""
        room = self._rooms.get(room_id)
        if room is None:  # restored, and no event or advance has shown this room yet
            return
        heap = self._heaps.get(room_id) or []
        while True:
            t_timer = heap[0][0] if heap else NEVER
            t_end = self._ends.get(room_id, NEVER)
            if min(t_timer, t_end) > limit:
                break
            if t_end < t_timer:  # at a tie timers go first: they are judged as of their due
                del self._ends[room_id]
                self._end_room(room_id, out)
                continue
            group = [heapq.heappop(heap)]
            due, _, viewer_id = group[0][:3]
            while heap and heap[0][0] == due and heap[0][2] == viewer_id:
                group.append(heapq.heappop(heap))
            self._fire(group, room, out)

    # --- states ---------------------------------------------------------------------------

    def _state(self, room_id: str, viewer_id: str, room: RoomTimeline, ts: int,
               out: list[Effect]) -> ViewerState:
        viewers = self._states.get(room_id)
        if viewers is None:
            viewers = self._states[room_id] = {}
        s = viewers.get(viewer_id)
        started = room.started_at or 0
        if s is None:
            s = viewers[viewer_id] = ViewerState(broadcast=started)
        elif started != s.broadcast and started:
            if not s.broadcast:
                s.broadcast = started  # the host's broadcast.started arrived after the viewer
            elif started > s.broadcast:
                # The room went live again: tags describe the current broadcast only.
                for tag, values in s.tags.items():
                    for value in values:
                        out.append(TagChange(viewer_id=viewer_id, room_id=room_id, tag=tag,
                                             value=value, op="remove", ts=ts))
                s = viewers[viewer_id] = ViewerState(broadcast=started)
        return s

    # --- the end of a broadcast ---------------------------------------------------------

    def _end_room(self, room_id: str, out: list[Effect]) -> None:
        room = self._rooms[room_id]
        self._ended[room_id] = room.broadcast_id
        started = room.started_at or 0
        viewers = self._states.get(room_id, {})
        for viewer_id in sorted(viewers):  # sorted: the same order after a restore
            s = viewers[viewer_id]
            if not s.followup_done and (s.broadcast == started or not s.broadcast):
                self._end_viewer(s, room_id, viewer_id, room, out)

    def _end_viewer(self, s: ViewerState, room_id: str, viewer_id: str, room: RoomTimeline,
                    out: list[Effect]) -> None:
        """End-of-show tags and the one follow-up, for a viewer who was in the room."""
        if s.visits == 0 or room.ended_at is None:
            return  # only orders seen: not a viewer of this show (yet)
        ts = room.ended_at
        s.followup_done = True
        self._dirty.add((room_id, viewer_id))
        self._watch_tags(s, room_id, viewer_id, ts, out)
        # As of the end, so a payment just after it (applied early within grace_ms) does
        # not change the segment. SCRM should still check drop_off before the coupon.
        carted = any_by(s.cart, ts) or any_by(s.placed, ts)
        paid = any_by(s.paid, ts)
        if T.drop_off_at_end(carted=carted, paid=paid):
            self._add_tag(s, room_id, viewer_id, T.DROP_OFF, T.CART_UNPAID, ts, out)
            if s.paid:  # paid after the end, applied first within grace_ms: removed as then
                self._remove_tag(s, room_id, viewer_id, T.DROP_OFF, T.CART_UNPAID,
                                 min(s.paid.values()), out)
        rule = self._followups.get(T.followup_segment(carted=carted, paid=paid))
        if rule is not None:
            out.append(FollowUp(viewer_id=viewer_id, room_id=room_id, segment=rule.segment,
                                action=rule.action, due_at=ts + rule.after_s * 1000))


__all__ = ["ViewerEngine"]
