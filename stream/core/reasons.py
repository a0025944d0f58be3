"""Why a nudge that was decided was not shown: the one list of suppression reasons.

The engine decides most of them (caps, exits, quiet hours, stock, holdout); other
parts may add their own (the gateway's `expired` for a nudge held too long for a
disconnected viewer). A new reason is one line here: the metrics JSON, the dashboard
and Prometheus take their labels from this table, so labels stay bounded (anything
not listed is counted as `other`).
"""

from __future__ import annotations

from typing import Final

# reason -> what the host reads beside it. Order is the dashboard's order.
REASONS: Final[dict[str, str]] = {
    "holdout": "held out to measure uplift (decided, never shown)",
    "cap": "the rule's cap per viewer per broadcast was reached",
    "cooldown": "the rule fired for this viewer too recently",
    "hourly_cap": "the viewer's nudges per hour (all rules) were used up",
    "exit:ordered": "the viewer ordered the product (or paid, for cart reminders)",
    "exit:left": "the viewer had left the room",
    "exit:ended": "the broadcast had ended",
    "exit:low_stock": "the product's remaining stock was at or below the rule's low mark",
    "sold_out": "the product had no available stock at fire time",
    "quiet_hours": "inside the viewer's local quiet hours (off-air channels)",
    "lost_priority": "another rule due at the same instant won",
    "expired": "held for a disconnected viewer longer than the hold time",
}
OTHER: Final = "other"


def label(reason: str) -> str:
    """A bounded label for `reason`: itself if known, else `other`."""
    return reason if reason in REASONS else OTHER


def stat_field(rule_id: str, reason: str) -> str:
    """The room stats field that counts one rule's suppressions for one reason."""
    return f"suppressed:{rule_id}:{label(reason)}"


def parse_stat_field(field: str) -> tuple[str, str] | None:
    """(rule, reason) of a `stat_field`, or None for any other field."""
    if not field.startswith("suppressed:"):
        return None
    body = field.removeprefix("suppressed:")
    # Rule ids and reasons may both hold colons (`exit:left`): match the known tails.
    for reason in (*REASONS, OTHER):
        if body.endswith(":" + reason) and len(body) > len(reason) + 1:
            return body[:-len(reason) - 1], reason
    return None
