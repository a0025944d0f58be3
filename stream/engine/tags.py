"""Tag derivation (seed 001): what a viewer did, as (tag, value) pairs for the brand's SCRM.

Pure functions and a compiled view of `TagFile`; the engine in `stream.viewers` keeps the
tags a viewer holds and emits a `TagChange` only when one of these answers changes.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Literal

from stream.engine.rules import TagFile

if TYPE_CHECKING:
    from stream.engine.timeline import RoomTimeline

WATCH_DEPTH = "watch_depth"
INTERACTION = "interaction"
CONVERSION_NODE = "conversion_node"
DROP_OFF = "drop_off"
HIGH_POTENTIAL = "high_potential"
SOURCE = "source"
LEADER = "leader"
VISITOR = "visitor"

CART_UNPAID = "cart_unpaid"
PAYMENT_FAILED = "payment_failed"

# Tags that hold one value at a time: setting a new value removes the old one.
EXCLUSIVE = frozenset({WATCH_DEPTH, SOURCE, LEADER, VISITOR})

# Event type -> the interaction value it proves.
INTERACTIONS: dict[str, str] = {
    "interaction.like": "liked",
    "interaction.comment": "commented",
    "interaction.share": "shared",
    "cart.clicked": "cart_clicked",
    "fan.joined": "fan_club",
}

FollowUpSegment = Literal["ordered", "cart_unpaid", "watched_only"]

_NO_LIMIT = 1 << 62  # the last watch-depth bucket has no upper bound


class TagPlan:
    """`TagFile` compiled once per rules version, so per-event checks are a few compares."""

    __slots__ = ("buckets", "hp_visits", "hp_watch_ms", "keywords", "limits", "private")

    def __init__(self, tags: TagFile) -> None:
        self.buckets: tuple[tuple[int, str], ...] = tuple(
            (_NO_LIMIT if b.below_s is None else b.below_s * 1000, b.value)
            for b in tags.watch_depth)
        self.limits = [limit for limit, _ in self.buckets[:-1]]
        self.private = frozenset(tags.private_sources)
        self.keywords: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(
            (k.tag, k.value, tuple(k.phrases)) for k in tags.keyword)
        self.hp_watch_ms = tags.high_potential.min_watch_s * 1000
        self.hp_visits = tags.high_potential.min_visits

    def watch_depth(self, watch_ms: int) -> str:
        """The first bucket whose upper bound is above the watch time (the last if none)."""
        return self.buckets[bisect_right(self.limits, watch_ms)][1]

    def source(self, source: str) -> str:
        """Private domain (the brand's own groups, leaders, mini program) or public."""
        return "private" if source in self.private else "public"

    def keyword_tags(self, text: str) -> list[tuple[str, str]]:
        """(tag, value) of every keyword rule with a phrase inside `text`, in rule order."""
        found: list[tuple[str, str]] = []
        for tag, value, phrases in self.keywords:
            if (tag, value) not in found and any(p in text for p in phrases):
                found.append((tag, value))
        return found

    def high_potential(self, watch_ms: int, visits: int, *, ordered: bool) -> bool:
        """Long watch or repeated visits, and no order yet (seed 001: 决策观望期)."""
        return not ordered and (watch_ms >= self.hp_watch_ms or visits >= self.hp_visits)


def conversion_node(room: RoomTimeline, ts: int) -> str:
    """`segment:pinned_sku` on air at `ts`; `none` before any segment, `-` with no pin."""
    segment = room.segment_at(ts)
    pinned = room.pinned_at(ts)
    return f"{segment[0] if segment else 'none'}:{pinned or '-'}"


def drop_off_at_end(*, carted: bool, paid: bool) -> bool:
    """Cart added (or order placed) but nothing paid when the show ends."""
    return carted and not paid


def followup_segment(*, carted: bool, paid: bool) -> FollowUpSegment:
    """Seed 000's post-show layers: paid anything / carted but unpaid / only watched."""
    if paid:
        return "ordered"
    return "cart_unpaid" if carted else "watched_only"
