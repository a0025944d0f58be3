"""Model against outputs: what is missing and what is extra, per kind of effect.

Soundness (nothing extra) and completeness (nothing missing) in one: both sides are
compared as multisets of whole records, so a doubled record also shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from stream.core.models import FollowUp, Nudge, TagChange

from .model import Expected


def key(record: msgspec.Struct) -> tuple[object, ...]:
    return msgspec.structs.astuple(record)


def diff(name: str, want: Iterable[msgspec.Struct], got: Iterable[msgspec.Struct],
         *, show: int = 3) -> list[str]:
    want_c, got_c = Counter(map(key, want)), Counter(map(key, got))
    missing, extra = want_c - got_c, got_c - want_c
    out = []
    for what, items in (("missing", missing), ("extra", extra)):
        if items:
            some = sorted(items, key=repr)[:show]
            out.append(f"{name}: {sum(items.values())} {what}, e.g. {some}")
    return out


def differences(want: Expected, nudges: Sequence[Nudge], tags: Sequence[TagChange],
                followups: Sequence[FollowUp], *, until: int | None = None) -> list[str]:
    """Every disagreement; nudges only up to `until` (what a live run has reached)."""
    def due(items: Iterable[Nudge]) -> list[Nudge]:
        return [n for n in items if until is None or n.ts <= until]

    return (diff("nudges", due(want.nudges), due(nudges)) + diff("tags", want.tags, tags)
            + diff("follow-ups", want.followups, followups))


def held(changes: Iterable[TagChange]) -> dict[str, set[tuple[str, str]]]:
    """The tags each viewer ends with, the records taken in their order."""
    out: dict[str, set[tuple[str, str]]] = {}
    for c in changes:
        tags = out.setdefault(c.viewer_id, set())
        (tags.add if c.op == "add" else tags.discard)((c.tag, c.value))
    return {v: t for v, t in out.items() if t}
