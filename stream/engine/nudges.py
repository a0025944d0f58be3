"""Nudge decisions: rules compiled for the engine, holdout, quiet hours, caps, messages.

Everything here is a pure function of its arguments; the engine in `stream.viewers`
owns the timers and the per-viewer state and asks these functions what to do when a
timer is due.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from stream.engine.rules import (
    ON_AIR_CHANNELS,
    CartUnpaidTrigger,
    DwellTrigger,
    EventCountTrigger,
    Exit,
    NudgeRule,
    QuietHours,
    Rules,
)

if TYPE_CHECKING:
    from stream.engine.timeline import Product

Variant = Literal["treatment", "holdout"]
# A suppression reason: a key of `stream.core.reasons.REASONS` (one table, easy to extend).
Reason = str
Kind = Literal["d", "c", "e"]  # dwell, cart_unpaid, event_count: one byte in the state

DWELL: Kind = "d"
CART: Kind = "c"
COUNT: Kind = "e"

DEFAULT_TZ = "Asia/Shanghai"
HOUR_MS = 3_600_000


class CompiledRule:
    """One enabled `NudgeRule` with its numbers in ms and its quiet window in minutes."""

    __slots__ = ("cooldown_ms", "count", "delay_ms", "event", "id", "kind", "order", "quiet",
                 "rule", "window_ms")

    def __init__(self, rule: NudgeRule, order: int) -> None:
        self.rule = rule
        self.id = rule.id
        self.order = order  # file order breaks priority ties, so the outcome is stable
        self.cooldown_ms = rule.cooldown_s * 1000
        trigger = rule.trigger
        self.delay_ms = 0
        self.event = ""
        self.count = 0
        self.window_ms = 0
        self.kind: Kind
        if isinstance(trigger, DwellTrigger):
            self.kind, self.delay_ms = DWELL, trigger.seconds * 1000
        elif isinstance(trigger, CartUnpaidTrigger):
            self.kind, self.delay_ms = CART, trigger.seconds * 1000
        else:
            assert isinstance(trigger, EventCountTrigger)
            self.kind, self.event = COUNT, trigger.event
            self.count, self.window_ms = trigger.count, trigger.window_s * 1000
        # On-air channels show inside the live room: the viewer is watching, so no quiet hours.
        quiet = rule.quiet_hours
        self.quiet = None if quiet is None or rule.channel in ON_AIR_CHANNELS else _minutes(quiet)

    @property
    def rank(self) -> tuple[int, int]:
        """Lower wins when several rules fire for one viewer at one instant."""
        return (self.rule.priority, self.order)


class NudgePlan:
    """The enabled rules of one `Rules` version, indexed the way the engine looks them up."""

    __slots__ = ("by_id", "cart", "counts", "dwell", "per_hour")

    def __init__(self, rules: Rules) -> None:
        compiled = [CompiledRule(r, i) for i, r in enumerate(rules.nudges) if r.enabled]
        self.by_id = {c.id: c for c in compiled}
        self.dwell = tuple(c for c in compiled if c.kind == DWELL)
        self.cart = tuple(c for c in compiled if c.kind == CART)
        counts: dict[str, list[CompiledRule]] = {}
        for c in compiled:
            if c.kind == COUNT:
                counts.setdefault(c.event, []).append(c)
        self.counts = {event: tuple(cs) for event, cs in counts.items()}
        self.per_hour = rules.limits.per_viewer_per_hour


def _minutes(quiet: QuietHours) -> tuple[int, int]:
    def parse(clock: str) -> int:
        hours, minutes = clock.split(":")
        return int(hours) * 60 + int(minutes)

    return parse(quiet.start), parse(quiet.end)


def holdout_variant(viewer_id: str, rule_id: str, share: float) -> Variant:
    """Deterministic by (viewer, rule): the same viewer stays in the same arm everywhere."""
    if share <= 0.0:
        return "treatment"
    digest = hashlib.sha256(f"{viewer_id}|{rule_id}".encode()).digest()
    return "holdout" if int.from_bytes(digest[:8], "big") / 2**64 < share else "treatment"


@lru_cache(maxsize=256)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def local_minutes(ts_ms: int, tz: str | None) -> int:
    """Minutes since local midnight at `ts_ms` in `tz` (the viewer's zone, default Shanghai)."""
    local = datetime.fromtimestamp(ts_ms / 1000, _zone(tz or DEFAULT_TZ))
    return local.hour * 60 + local.minute


def in_quiet_hours(window: tuple[int, int], ts_ms: int, tz: str | None) -> bool:
    """Is local time inside [start, end)? A window may wrap midnight; start == end is empty.

    A nudge due inside the window is suppressed, not deferred: a reminder sent hours
    later at 08:00 is about a show long over, which is the seed-002 mistake in reverse.
    """
    start, end = window
    now = local_minutes(ts_ms, tz)
    if start <= end:
        return start <= now < end
    return now >= start or now < end


def exit_holds(exit: Exit, *, ordered: bool, present: bool, ended: bool) -> bool:
    """Seed 002's 终止条件: any enabled exit condition that holds at the due time."""
    return exit_reason(exit, ordered=ordered, present=present, ended=ended) is not None


def exit_reason(exit: Exit, *, ordered: bool, present: bool,
                ended: bool) -> Literal["exit:ordered", "exit:left", "exit:ended"] | None:
    """The first enabled exit condition that holds at the due time, as a reason."""
    if exit.ordered_sku and ordered:
        return "exit:ordered"
    if exit.left_room and not present:
        return "exit:left"
    if exit.broadcast_ended and ended:
        return "exit:ended"
    return None


def stock_reason(rule: NudgeRule, available: int | None,
                 ) -> Literal["sold_out", "exit:low_stock"] | None:
    """Why the product's stock at fire time stops this nudge; None if it does not (or the
    stock is not known: no stock.set seen, so nothing to judge by)."""
    if available is None:
        return None
    if available <= 0 and rule.exit.sold_out:
        return "sold_out"
    low = rule.low_stock
    if low is not None and low.exit and 0 < available <= low.at_most:
        return "exit:low_stock"
    return None


def message_for(rule: NudgeRule, available: int | None) -> str:
    """The rule's message, or its low-stock variant when 1..at_most units remain."""
    low = rule.low_stock
    if (low is not None and low.message is not None and available is not None
            and 0 < available <= low.at_most):
        return low.message
    return rule.message


def cap_reason(rule: CompiledRule, fired: tuple[int, int] | None, hour: list[int] | None,
               per_hour: int, ts: int) -> Literal["cap", "cooldown", "hourly_cap"] | None:
    """Why a rule may not fire again for this viewer at `ts`, or None if it may.

    `fired` is (times fired this broadcast, last fire ts) for this rule; `hour` the fire
    times of every rule for this viewer (older ones are ignored here).
    """
    if fired is not None:
        count, last = fired
        if count >= rule.rule.cap_per_broadcast:
            return "cap"
        if ts - last < rule.cooldown_ms:
            return "cooldown"
    if hour and sum(1 for t in hour if t > ts - HOUR_MS) >= per_hour:
        return "hourly_cap"
    return None


def format_price(price: float) -> str:
    """59.9 -> "59.9", 15.0 -> "15": how prices are written on a popup."""
    return f"{price:.2f}".rstrip("0").rstrip(".")


def render(message: str, product: Product | None) -> str:
    """Fill {product_name} and {price}; anything unknown stays literal for the sender.

    `{remaining}` always stays: the worker fills it from live stock at send time.
    """
    if product is None:
        return message
    text = message.replace("{product_name}", product.name)
    if product.price is not None:
        text = text.replace("{price}", format_price(product.price))
    return text
