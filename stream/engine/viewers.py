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
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping

import msgspec

from stream.core.models import (
    CartAdded,
    CartClicked,
    Comment,
    FanJoined,
    FollowUp,
    Like,
    Nudge,
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
from stream.engine.nudges import (
    CART,
    DWELL,
    HOUR_MS,
    CompiledRule,
    Kind,
    NudgePlan,
    Reason,
    cap_reason,
    exit_reason,
    holdout_variant,
    in_quiet_hours,
    message_for,
    render,
    stock_reason,
)
from stream.engine.rules import FollowUpRule, Rules
from stream.engine.state import (
    NEVER,
    PRESENCE_TIMEOUT_MS,
    Timer,
    ViewerState,
    any_by,
    decode_state,
    earliest,
    encode_state,
    in_room,
    pack_times,
    present_at,
    unpack_times,
    zone_at,
)
from stream.engine.stock import StockBook
from stream.engine.tags import TagPlan
from stream.engine.timeline import RoomTimeline
from stream.engine.watermark import COMMERCE, PLATFORM, Watermarks

# How long past the grace an absence is kept: a minute of margin for out-of-order events.
AWAY_KEPT_MS = 60_000

# --- outputs -----------------------------------------------------------------------------


class Suppressed(msgspec.Struct, frozen=True, kw_only=True):
    """A nudge that was due but not shown, and why (for the operator and the uplift stats)."""

    viewer_id: str
    room_id: str
    rule_id: str
    sku: str | None
    reason: Reason
    ts: int


Effect = Nudge | TagChange | FollowUp | Suppressed


HeapEntry = tuple[int, str, str, str, str, Kind]  # (due, room, viewer, rule, sku, kind)


# --- the engine -------------------------------------------------------------------------


class ViewerEngine:
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

    # --- timers in the state ------------------------------------------------------------

    def _arm(self, s: ViewerState, room_id: str, viewer_id: str, rule: CompiledRule, sku: str,
             due: int) -> None:
        timer: Timer = (due, rule.id, sku, rule.kind)
        if s.timers is None:
            s.timers = [timer]
        else:
            s.timers.append(timer)
        heap = self._heaps.get(room_id)
        if heap is None:
            heap = self._heaps[room_id] = []
        heapq.heappush(heap, (due, room_id, viewer_id, rule.id, sku, rule.kind))

    def _disarm(self, s: ViewerState, kind: Kind, sku: str, ts: int) -> None:
        """Drop `kind` timers for `sku` due at or after `ts`; earlier ones were already due."""
        if s.timers:
            s.timers = [t for t in s.timers if not (t[3] == kind and t[2] == sku and t[0] >= ts)]
            if not s.timers:
                s.timers = None

    def _arm_cart(self, s: ViewerState, room_id: str, viewer_id: str, sku: str,
                  ts: int) -> None:
        """Arm cart_unpaid for `sku` from its first unpaid moment (cart.added or placed).

        Keeping the earliest start makes the due time independent of whether the cart
        event (platform) or the order event (commerce backend) happens to arrive first.
        """
        paid_at = s.paid.get(sku, NEVER) if s.paid else NEVER
        for rule in self._plan.cart:
            due = ts + rule.delay_ms
            if paid_at <= due:
                continue  # paid by then: the payment would have disarmed it
            # Only a reminder still to come covers this one: one due before `ts` is judged
            # on its own (it may sit in the state for grace_ms; that must not matter).
            armed = [t for t in s.timers or () if t[1] == rule.id and t[2] == sku and t[0] >= ts]
            if armed and armed[0][0] <= due:
                continue
            if armed:
                s.timers.remove(armed[0])  # type: ignore[union-attr]
            self._arm(s, room_id, viewer_id, rule, sku, due)

    def _count(self, s: ViewerState, rules: tuple[CompiledRule, ...], room_id: str,
               viewer_id: str, ts: int) -> None:
        """event_count: the count-th event inside the window fires at that event's ts."""
        if s.counts is None:
            s.counts = {}
        for rule in rules:
            recent = [t for t in unpack_times(s.counts.get(rule.id, ())) if t > ts - rule.window_ms]
            recent.append(ts)
            if len(recent) >= rule.count:
                recent = []  # start over: the next fire needs `count` more events
                self._arm(s, room_id, viewer_id, rule, s.focus, ts)
            if recent:
                s.counts[rule.id] = pack_times(recent)
            else:
                s.counts.pop(rule.id, None)
        if not s.counts:
            s.counts = None

    # --- firing -------------------------------------------------------------------------

    def _fire(self, group: list[HeapEntry], room: RoomTimeline, out: list[Effect]) -> None:
        """Every timer of one viewer due at one instant: judge each, the best eligible wins."""
        due, room_id, viewer_id = group[0][:3]
        s = self._states.get(room_id, {}).get(viewer_id)
        if s is None or not s.timers:
            return
        candidates: list[tuple[CompiledRule, str]] = []
        for _, _, _, rule_id, sku, kind in group:
            timer = (due, rule_id, sku, kind)
            if timer not in s.timers:
                continue  # disarmed since: a stale heap entry
            s.timers.remove(timer)
            self._dirty.add((room_id, viewer_id))
            rule = self._plan.by_id.get(rule_id)
            if rule is not None:  # a rule removed or disabled by a reload fires nothing
                candidates.append((rule, sku))
        if not s.timers:
            s.timers = None
        if not candidates:
            return
        candidates.sort(key=lambda c: c[0].rank)
        reasons = [self._blocked(s, rule, sku, due, room) for rule, sku in candidates]
        winner = next((i for i, r in enumerate(reasons) if r is None), None)
        for i, (rule, sku) in enumerate(candidates):
            reason = reasons[i] if i != winner else None
            if i == winner:
                self._emit(s, rule, sku, due, room, viewer_id, out)
            elif reason is None:
                reason = "lost_priority"
            if reason is not None:
                out.append(Suppressed(viewer_id=viewer_id, room_id=room_id, rule_id=rule.id,
                                      sku=sku or None, reason=reason, ts=due))

    def _blocked(self, s: ViewerState, rule: CompiledRule, sku: str, ts: int,
                 room: RoomTimeline) -> Reason | None:
        """Why this rule may not fire at `ts`, judged as of `ts`; None if it may.

        The first that holds, in this order: the viewer's exits, the product's stock,
        quiet hours, then the caps (a nudge that could not be shown uses no cap)."""
        ended = room.ended_at is not None and room.ended_at <= ts
        exited = exit_reason(rule.rule.exit, ordered=self._ordered(s, rule, sku, ts),
                             present=present_at(s, ts, self.presence_timeout_ms),
                             ended=ended)
        if exited is not None:
            return exited
        if sku:
            stocked = stock_reason(rule.rule, self.stock.available_at(room.room_id, sku, ts))
            if stocked is not None:
                return stocked
        if rule.quiet is not None and in_quiet_hours(rule.quiet, ts, zone_at(s, ts)):
            return "quiet_hours"
        fired = s.fired.get(rule.id) if s.fired else None
        return cap_reason(rule, fired, s.hour, self._plan.per_hour, ts)

    @staticmethod
    def _ordered(s: ViewerState, rule: CompiledRule, sku: str, ts: int) -> bool:
        """exit.ordered_sku as of `ts`: an order placed for the sku (any order if no sku).

        For cart_unpaid rules a placed order is the very thing being reminded about, so
        there it means paid; otherwise placed counts, cancelled or not (seed 002's pitfall
        is the reminder after ordering, and a cancelled order is a decision too).
        """
        book = s.paid if rule.kind == CART else s.placed
        if not book:
            return False
        if sku:
            return book.get(sku, NEVER) <= ts
        return min(book.values()) <= ts

    def _emit(self, s: ViewerState, rule: CompiledRule, sku: str, ts: int, room: RoomTimeline,
              viewer_id: str, out: list[Effect]) -> None:
        """Record the fire (a holdout fire counts for caps too) and emit the nudge."""
        if s.fired is None:
            s.fired = {}
        count = s.fired.get(rule.id, (0, 0))[0]
        s.fired[rule.id] = (count + 1, ts)
        s.hour = [t for t in s.hour or () if t > ts - HOUR_MS] + [ts]
        variant = holdout_variant(viewer_id, rule.id, rule.rule.holdout)
        product = room.products.get(sku) if sku else None
        message = rule.rule.message
        if sku and rule.rule.low_stock is not None:
            message = message_for(rule.rule, self.stock.available_at(room.room_id, sku, ts))
        out.append(Nudge(viewer_id=viewer_id, room_id=room.room_id, rule_id=rule.id,
                         sku=sku or None, message=render(message, product),
                         variant=variant, channel=rule.rule.channel, ts=ts))
        if variant == "holdout":
            out.append(Suppressed(viewer_id=viewer_id, room_id=room.room_id, rule_id=rule.id,
                                  sku=sku or None, reason="holdout", ts=ts))

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


__all__ = ["Effect", "Suppressed", "ViewerEngine"]
