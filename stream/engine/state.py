"""One viewer's state in one room's broadcast, and its packing (msgpack, as an array).

State per (room, viewer) is one `ViewerState`, msgpack-encoded as an array (no field
names) with empty containers omitted: ~200 bytes for a typical viewer, well under a KB
for a busy one. Timers live in the state as (due, rule, sku, kind).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import accumulate, pairwise

import msgspec

from stream.engine.nudges import Kind

Timer = tuple[int, str, str, Kind]  # (due, rule id, sku or "", kind)

# A viewer is online while their last event from the app is younger than this (room event
# time; LIVECOMMERCE_PRESENCE_TIMEOUT_S, 60 s: two of the app's 30 s heartbeats).
PRESENCE_TIMEOUT_MS = 60_000


class ViewerState(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One viewer in one room's broadcast. All times are event-time epoch ms.

    Field order matters for size: array_like drops names, omit_defaults drops the
    trailing defaults, so the rarely used containers come last and default to None.
    """

    broadcast: int = 0  # the room's started_at this state belongs to; 0: not known yet
    joined: int = -1  # last viewer.joined (-1: never)
    # The leave that closed the last visit, or when a visit timed out (its last event + the
    # timeout); -1 while in it (and never).
    left: int = -1
    seen: int = -1  # last proof of presence in the current visit
    watched: int = 0  # ms of closed visits
    visits: int = 0
    focus: str = ""  # sku of the last product.viewed ("": none)
    focus_since: int = 0
    tags: dict[str, list[str]] = {}  # held tags: tag -> values
    followup_done: bool = False
    source: str = ""
    leader: str = ""
    region: str = ""
    tz: str = ""
    returning: int = -1  # -1 unknown, 0 new, 1 returning
    timers: list[Timer] | None = None
    cart: dict[str, int] | None = None  # sku -> first cart.added ts
    placed: dict[str, int] | None = None  # sku -> first order.placed ts
    paid: dict[str, int] | None = None  # sku -> first order.paid ts
    orders: dict[str, list[str]] | None = None  # unsettled order id -> skus
    fired: dict[str, tuple[int, int]] | None = None  # rule id -> (count, last ts)
    hour: list[int] | None = None  # fire times within the last hour, all rules
    counts: dict[str, list[int]] | None = None  # event_count rule -> recent ts, pack_times'ed
    # Recent absences as [from, to, from, to, ...]: a leave (or "never here": 0) to the join
    # that ended it. Timers are judged up to grace_ms after their due time, when a viewer
    # may have left and come back since; only these say whether they were here then.
    away: list[int] | None = None
    # The zone before the latest change of `tz`, and when it changed: a nudge due before
    # a join that brought a new zone is judged in the zone the viewer had then.
    tz_was: str = ""
    tz_at: int = 0
    # high_potential was added (it comes once a broadcast, before the first order). Not
    # `placed is None`: with the order topic read ahead, an order may be applied before
    # the view, a few seconds earlier in event time, that made the viewer high potential.
    potential_done: bool = False


def in_room(s: ViewerState) -> bool:
    return s.joined >= 0 and s.left < s.joined


def present_at(s: ViewerState, ts: int, timeout_ms: int = PRESENCE_TIMEOUT_MS) -> bool:
    """Was the viewer in the room at `ts`? Before the current visit, unless in a recent
    absence (a join without a leave, or in the ms of the leave, was never away). An open
    visit is online until its last event is `timeout_ms` old (as the host's count is)."""
    if s.joined < 0:
        return False
    if s.joined <= ts:
        return ts < s.seen + timeout_ms if in_room(s) else s.left > ts
    away = s.away or ()
    return not any(away[i] <= ts < away[i + 1] for i in range(0, len(away), 2))


def zone_at(s: ViewerState, ts: int) -> str:
    """The viewer's zone as of `ts` ("": none given)."""
    return s.tz if ts >= s.tz_at else s.tz_was


def earliest(book: dict[str, int], sku: str, ts: int) -> None:
    if book.get(sku, NEVER) > ts:
        book[sku] = ts


def any_by(book: dict[str, int] | None, ts: int) -> bool:
    """Does `book` (sku -> first ts) have an entry at or before `ts`?"""
    return bool(book) and min(book.values()) <= ts  # type: ignore[union-attr]


def pack_times(times: list[int]) -> list[int]:
    """Event times as the first one and then gaps: 3 bytes a like instead of 9."""
    return [times[0], *(b - a for a, b in pairwise(times))]


def unpack_times(packed: Iterable[int]) -> list[int]:
    return list(accumulate(packed))


encode_state = msgspec.msgpack.Encoder().encode
decode_state = msgspec.msgpack.Decoder(ViewerState).decode

NEVER = 1 << 62


def tags_in(blob: bytes) -> dict[str, list[str]]:
    """The tags held in a state saved by `ViewerEngine.export_dirty`."""
    return decode_state(blob).tags


__all__ = ["NEVER", "PRESENCE_TIMEOUT_MS", "Timer", "ViewerState", "any_by", "decode_state",
           "earliest", "encode_state", "in_room", "pack_times", "present_at", "tags_in",
           "unpack_times", "zone_at"]
