"""What the viewer engine decides: nudges, tag changes, follow-ups, and nudges held back.

`Effect` is everything `ViewerEngine.apply` and `advance` return; the worker claims each
one once (stream/store/claims.py), sends the nudges, tags and follow-ups to their output
topics and counts the suppressed by reason.
"""

from __future__ import annotations

import msgspec

from stream.core.models import FollowUp, Nudge, TagChange
from stream.engine.nudges import Reason


class Suppressed(msgspec.Struct, frozen=True, kw_only=True):
    """A nudge that was due but not shown, and why (for the operator and the uplift stats)."""

    viewer_id: str
    room_id: str
    rule_id: str
    sku: str | None
    reason: Reason
    ts: int


Effect = Nudge | TagChange | FollowUp | Suppressed


__all__ = ["Effect", "Suppressed"]
