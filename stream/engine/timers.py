"""The viewer engine's timers: armed in a viewer's state, indexed by a heap per room, and
judged when due (the exits, stock, quiet hours and caps as of the due time; the best
eligible rule wins, the rest are `Suppressed` with their reason).

`Timers` is the lowest of the engine's layers (`Timers` <- `EventHandlers`, handlers.py
<- `ViewerEngine`, viewers.py), one class per concern over the same fields; the engine's
`__init__` sets them. A heap entry counts only while its twin is still in the state
(disarming is a list removal; stale entries are skipped when they come up).
"""

from __future__ import annotations

import heapq

from stream.core.models import Nudge
from stream.engine.effects import Effect, Suppressed
from stream.engine.nudges import (
    CART,
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
from stream.engine.state import (
    NEVER,
    Timer,
    ViewerState,
    pack_times,
    present_at,
    unpack_times,
    zone_at,
)
from stream.engine.stock import StockBook
from stream.engine.timeline import RoomTimeline

HeapEntry = tuple[int, str, str, str, str, Kind]  # (due, room, viewer, rule, sku, kind)


class Timers:
    """Arming, disarming and firing the timers of one partition's viewers."""

    # Set by ViewerEngine.__init__ and its rules setter; declared here for the type checker.
    presence_timeout_ms: int
    stock: StockBook
    _states: dict[str, dict[str, ViewerState]]
    _heaps: dict[str, list[HeapEntry]]
    _dirty: set[tuple[str, str]]
    _plan: NudgePlan

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


__all__ = ["HeapEntry", "Timers"]
