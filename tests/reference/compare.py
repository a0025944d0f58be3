"""Model against outputs: what is missing and what is extra, per kind of effect.

Soundness (nothing extra) and completeness (nothing missing) in one: both sides are
compared as multisets of whole records, so a doubled record also shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from stream.core.models import FollowUp, Nudge, OrderResult, TagChange

from .inventory import OrderOutcome, final
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
                followups: Sequence[FollowUp], *, until: int | None = None,
                valueless: frozenset[str] = frozenset()) -> list[str]:
    """Every disagreement; nudges only up to `until` (what a live run has reached); tags
    in `valueless` compared without their value (the record must still be there)."""
    def due(items: Iterable[Nudge]) -> list[Nudge]:
        return [n for n in items if until is None or n.ts <= until]

    def loose(items: Iterable[TagChange]) -> list[TagChange]:
        return [msgspec.structs.replace(t, value="*") if t.tag in valueless else t
                for t in items]

    return (diff("nudges", due(want.nudges), due(nudges))
            + diff("tags", loose(want.tags), loose(tags))
            + diff("follow-ups", want.followups, followups))


def held(changes: Iterable[TagChange]) -> dict[str, set[tuple[str, str]]]:
    """The tags each viewer ends with, the records taken in their order."""
    out: dict[str, set[tuple[str, str]]] = {}
    for c in changes:
        tags = out.setdefault(c.viewer_id, set())
        (tags.add if c.op == "add" else tags.discard)((c.tag, c.value))
    return {v: t for v, t in out.items() if t}


def order_differences(want: Sequence[OrderOutcome],
                      results: Sequence[tuple[int, int, OrderResult]]) -> list[str]:
    """Live order results, (partition, offset, result), against the inventory model:
    the same outcomes (results are at-least-once, so a repeat is no difference), the same
    last outcome per order, and every order's results on one partition."""
    ordered = sorted(results, key=lambda r: (r[0], r[1]))
    got = [OrderOutcome(r.order_id, r.status, r.reason or "") for _, _, r in ordered]
    out = []
    missing, extra = set(want) - set(got), set(got) - set(want)
    if missing:
        out.append(f"order outcomes: {len(missing)} missing, e.g. {sorted(missing)[:3]}")
    if extra:
        out.append(f"order outcomes: {len(extra)} extra, e.g. {sorted(extra)[:3]}")
    last_want, last_got = final(want), final(got)
    wrong = sorted((k, last_want[k], last_got.get(k)) for k in last_want
                   if last_got.get(k) != last_want[k])
    if wrong:
        out.append(f"last outcome: {len(wrong)} orders end elsewhere, e.g. {wrong[:3]}")
    partitions: dict[str, set[int]] = {}
    for partition, _, r in ordered:
        partitions.setdefault(r.order_id, set()).add(partition)
    split = sorted(k for k, ps in partitions.items() if len(ps) > 1)
    if split:
        out.append(f"{len(split)} orders with results on several partitions, e.g. {split[:3]}")
    return out
