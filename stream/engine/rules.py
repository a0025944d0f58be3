"""Nudge, tag and follow-up rules: data in `rules/*.toml`, validated into Structs.

Operators edit the files; `livecommerce rules check` and the worker's hot reload both
go through `load_dir`, which refuses a bad file with its name, the rule and the field.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from stream.core.models import EVENT_TYPES, Name

Seconds = Annotated[int, Meta(ge=0, le=7 * 24 * 3600)]
Clock = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")]  # "22:00"
Share = Annotated[float, Meta(ge=0.0, le=1.0)]

# Channels shown inside the live room are on-air: quiet hours do not apply to them.
ON_AIR_CHANNELS = frozenset({"live_popup", "live_banner"})
# The placeholders a nudge message may use; anything else would fail at fire time.
MESSAGE_FIELDS = frozenset({"product_name", "price", "remaining"})
Channel = Literal["live_popup", "live_banner", "wecom", "sms", "app_push"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class DwellTrigger(_Strict, tag="dwell", tag_field="kind", frozen=True, kw_only=True):
    """The viewer kept one product open for `seconds` (product.viewed, no other since)."""

    seconds: Annotated[int, Meta(ge=1, le=24 * 3600)]


class CartUnpaidTrigger(_Strict, tag="cart_unpaid", tag_field="kind", frozen=True, kw_only=True):
    """A cart.added (or an order.placed) for a SKU not paid after `seconds`."""

    seconds: Annotated[int, Meta(ge=1, le=24 * 3600)]


class EventCountTrigger(_Strict, tag="event_count", tag_field="kind", frozen=True, kw_only=True):
    """`count` events of type `event` within `window_s` (e.g. 5 likes in a minute)."""

    event: str
    count: Annotated[int, Meta(ge=1, le=10_000)]
    window_s: Annotated[int, Meta(ge=1, le=24 * 3600)]

    def __post_init__(self) -> None:
        # A misspelt event type would be accepted and then simply never fire.
        if self.event not in EVENT_TYPES:
            raise ValueError(f"event: unknown event type {self.event!r}")


Trigger = DwellTrigger | CartUnpaidTrigger | EventCountTrigger


class Exit(_Strict, frozen=True, kw_only=True):
    """Re-checked at fire time: any true condition that holds cancels the nudge."""

    ordered_sku: bool = True
    left_room: bool = True
    broadcast_ended: bool = True
    # No nudge about a product with nothing available at fire time (reason `sold_out`).
    sold_out: bool = True


class QuietHours(_Strict, frozen=True, kw_only=True):
    """Local time window (the viewer's `tz`) with no off-air nudges; may wrap midnight."""

    start: Clock
    end: Clock

    def __post_init__(self) -> None:
        # Equal ends could mean "never quiet" or "always quiet"; make the operator say which.
        if self.start == self.end:
            raise ValueError("end: equal to start (an empty or all-day window is ambiguous)")


def _check_message(message: str, field: str) -> None:
    """Only known `{name}`s, and no other brace at all (checked without assuming how the
    engine fills them in, str.format or replace)."""
    for name in re.findall(r"\{([^{}]*)\}", message):
        if name not in MESSAGE_FIELDS:
            raise ValueError(f"{field}: unknown placeholder {{{name}}}; "
                             f"known: {', '.join(sorted(MESSAGE_FIELDS))}")
    if re.search(r"[{}]", re.sub(r"\{[^{}]*\}", "", message)):
        raise ValueError(f"{field}: a brace that is not part of a {{placeholder}}")


# A rule's low mark can be at most this: above it the engine keeps stock as "plenty"
# (stream.engine.stock.PLENTY), so it could not tell the mark from more.
LOW_STOCK_MAX = 100


class LowStock(_Strict, frozen=True, kw_only=True):
    """What a rule does when its product's remaining stock is low (1..at_most) at fire
    time: send `message` instead of its own, or `exit` (suppressed, `exit:low_stock`)."""

    at_most: Annotated[int, Meta(ge=1, le=LOW_STOCK_MAX)]
    message: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    exit: bool = False

    def __post_init__(self) -> None:
        if self.exit and self.message is not None:
            raise ValueError("exit: exit = true sends nothing, so a message "
                             "is never used; keep one of the two")
        if not self.exit and self.message is None:
            raise ValueError("message: missing (or set exit = true)")
        if self.message is not None:
            _check_message(self.message, "message")


class NudgeRule(_Strict, frozen=True, kw_only=True):
    id: Name
    version: Annotated[int, Meta(ge=1)] = 1
    enabled: bool = True
    trigger: Trigger
    exit: Exit = Exit()
    message: Annotated[str, Meta(min_length=1, max_length=500)]
    channel: Channel = "live_popup"
    cap_per_broadcast: Annotated[int, Meta(ge=1, le=100)] = 1
    cooldown_s: Seconds = 0
    priority: Annotated[int, Meta(ge=0, le=1000)] = 100
    holdout: Share = 0.0
    quiet_hours: QuietHours | None = None
    low_stock: LowStock | None = None

    def __post_init__(self) -> None:
        _check_message(self.message, "message")


class Limits(_Strict, frozen=True, kw_only=True):
    per_viewer_per_hour: Annotated[int, Meta(ge=1, le=1000)] = 3


class NudgeFile(_Strict, frozen=True, kw_only=True):
    limits: Limits = Limits()
    nudge: list[NudgeRule] = []


class Bucket(_Strict, frozen=True, kw_only=True):
    value: Annotated[str, Meta(min_length=1, max_length=32)]
    below_s: Seconds | None = None  # the last bucket has none


class KeywordRule(_Strict, frozen=True, kw_only=True):
    id: Name
    tag: Annotated[str, Meta(min_length=1, max_length=64)]
    value: Annotated[str, Meta(min_length=1, max_length=64)] = "true"
    phrases: Annotated[list[Annotated[str, Meta(min_length=1, max_length=50)]],
                       Meta(min_length=1)]


class HighPotential(_Strict, frozen=True, kw_only=True):
    min_watch_s: Seconds = 900
    min_visits: Annotated[int, Meta(ge=1)] = 2


class TagFile(_Strict, frozen=True, kw_only=True):
    watch_depth: list[Bucket] = msgspec.field(default_factory=lambda: [
        Bucket(value="<5min", below_s=300), Bucket(value="5-15min", below_s=900),
        Bucket(value=">15min")])
    high_potential: HighPotential = HighPotential()
    # Sources counted as the brand's own (private domain); all others are public.
    private_sources: list[Name] = msgspec.field(
        default_factory=lambda: ["wecom_group", "leader_share", "mini_program"])
    keyword: list[KeywordRule] = []


class FollowUpRule(_Strict, frozen=True, kw_only=True):
    segment: Literal["ordered", "cart_unpaid", "watched_only"]
    action: Annotated[str, Meta(min_length=1, max_length=200)]
    after_s: Seconds = 0


class FollowUpFile(_Strict, frozen=True, kw_only=True):
    followup: list[FollowUpRule] = []


class Rules(msgspec.Struct, frozen=True, kw_only=True):
    """Everything loaded from one rules directory, with a digest to tell versions apart."""

    nudges: tuple[NudgeRule, ...] = ()
    limits: Limits = Limits()
    tags: TagFile = TagFile()
    followups: tuple[FollowUpRule, ...] = ()
    digest: str = ""


class RuleError(ValueError):
    """A rule file that cannot be used; the message names file, rule and field."""


FILES: dict[str, type[msgspec.Struct]] = {
    "nudges.toml": NudgeFile, "tags.toml": TagFile, "followups.toml": FollowUpFile}


def load_dir(path: Path) -> Rules:
    """Load and validate every rule file in `path`; raise RuleError on the first problem."""
    parsed: dict[str, msgspec.Struct] = {}
    digest = hashlib.sha256()
    for name, schema in FILES.items():
        file = path / name
        if not file.exists():
            parsed[name] = schema()
            continue
        raw = file.read_bytes()
        digest.update(name.encode() + b"\0" + raw)
        parsed[name] = _decode(file, raw, schema)
    nudges: NudgeFile = parsed["nudges.toml"]  # type: ignore[assignment]
    _check_unique(path / "nudges.toml", "nudge", [r.id for r in nudges.nudge])
    tags: TagFile = parsed["tags.toml"]  # type: ignore[assignment]
    _check_unique(path / "tags.toml", "keyword", [r.id for r in tags.keyword])
    _check_buckets(path / "tags.toml", tags)
    followups: FollowUpFile = parsed["followups.toml"]  # type: ignore[assignment]
    return Rules(nudges=tuple(nudges.nudge), limits=nudges.limits, tags=tags,
                 followups=tuple(followups.followup), digest=digest.hexdigest()[:12])


def _decode(file: Path, raw: bytes, schema: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.toml.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `" not in message:  # the top level: a misspelt table name
            known = ", ".join(schema.__struct_fields__)
            raise RuleError(f"{file}: top level: {message} (known: {known})") from None
        raise RuleError(f"{file}: {_name_rule(raw, message)}") from None
    except msgspec.DecodeError as exc:
        raise RuleError(f"{file}: {_locate(raw, str(exc))}not valid TOML: {exc}") from None


def _locate(raw: bytes, error: str) -> str:
    """Best-effort `rule 'x': field: ` for a syntax error, from its line number.

    The file does not parse, so this reads lines: the key on the error line, and the
    `id = "..."` of the `[[table]]` block around it.
    """
    lines = raw.decode("utf-8", "replace").splitlines()
    match = re.search(r"at line (\d+)", error)
    at = int(match.group(1)) - 1 if match else len(lines) - 1
    if not 0 <= at < len(lines):
        return ""
    key = re.match(r"\s*([A-Za-z0-9_\-]+)\s*=", lines[at])
    start = next((i for i in range(at, -1, -1) if lines[i].lstrip().startswith("[[")), None)
    rule_id = None
    if start is not None:
        for line in lines[start + 1:]:
            if line.lstrip().startswith("[["):
                break
            found = re.match(r'\s*id\s*=\s*"([^"]*)"', line)
            if found:
                rule_id = found.group(1)
                break
    where = f"rule {rule_id!r}: " if rule_id else ""
    return where + (f"{key.group(1)}: " if key else f"line {at + 1}: ")


def _check_unique(file: Path, table: str, ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, rule_id in enumerate(ids):
        if rule_id in seen:
            raise RuleError(f"{file}: rule {rule_id!r}: {table}[{index}].id: used twice "
                            f"(also {table}[{seen[rule_id]}])")
        seen[rule_id] = index


def _name_rule(raw: bytes, error: str) -> str:
    """Turn msgspec's `- at `$.nudge[2].cooldown_s`` into `rule 'x': nudge[2].cooldown_s: ...`."""
    message, _, where = error.rpartition(" - at `")
    where = where.rstrip("`").removeprefix("$.") if where else ""
    if not message:
        return error
    head = where.split(".")[0]
    if "[" in head:
        table, index = head.rstrip("]").split("[")
        try:
            items = msgspec.toml.decode(raw).get(table, [])
            rule_id = items[int(index)].get("id") if isinstance(items[int(index)], dict) else None
        except Exception:
            rule_id = None
        if rule_id:
            return f"rule {rule_id!r}: {where}: {message}"
    return f"{where}: {message}" if where else message


def _check_buckets(file: Path, tags: TagFile) -> None:
    """Buckets are open-ended at the top and strictly increasing below it."""
    buckets = tags.watch_depth
    if not buckets:
        raise RuleError(f"{file}: watch_depth: needs at least one bucket")
    previous: int | None = None
    for index, bucket in enumerate(buckets):
        where = f"{file}: bucket {bucket.value!r}: watch_depth[{index}].below_s"
        last = index == len(buckets) - 1
        if last and bucket.below_s is not None:
            raise RuleError(f"{where}: the last bucket must have none (it is open-ended)")
        if not last and bucket.below_s is None:
            raise RuleError(f"{where}: missing (only the last bucket may omit it)")
        if bucket.below_s is not None:
            if previous is not None and bucket.below_s <= previous:
                raise RuleError(f"{where}: must increase ({bucket.below_s} after {previous})")
            previous = bucket.below_s
