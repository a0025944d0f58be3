"""The schema: every input event and every output record, as msgspec Structs.

Inputs are one tagged union on `type`, decoded strictly (unknown fields refused) so
a bad event fails at the boundary with an error that names the field, e.g.
``Expected `int`, got `str` - at `$[3].ts```.

Adding an event type, end to end:
1. A Struct here with its `tag` and its base (`ViewerEvent`, `OrderEvent` or
   `HostEvent`: the base's `role` says which token may send it and which topic holds
   it), added to `AnyEvent`.
2. The engine: a handler in `ViewerEngine._handlers` (viewer and order events), or a
   case in the room timeline's fold (host events).
3. The host's counters: `_COUNTERS` in `stream/core/counters.py`, if it is counted per
   minute; presence (`_OPS` in `stream/store/presence.py`), if it says something about
   a visit; the inventory's operations, if it moves stock.
4. The simulator's show, so the demo and the oracle tests exercise it.
5. The rule files, if a rule may trigger on it (`event_count` takes these tags).
`tests/unit/test_event_types.py` fails until each registry handles the new type or
names it as ignored on purpose.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

# Ids end up inside Redis keys with `{room}` hash tags, so braces and spaces are out.
# `\Z`, not `$`: `$` also matches before a trailing newline.
ID_PATTERN = r"^[A-Za-z0-9._:@\-]+\Z"


class IdChars:
    """Marks a str field whose characters must match ID_PATTERN. `codec` checks them once
    per body, after msgspec: a `Meta(pattern=...)` calls `re` on every id, and decoding
    the simulator's envelopes went 1.9-2.0x as fast without it (bench/decode.py, session
    14). The JSON schema still says the pattern."""


_ID_CHARS = IdChars()
Id = Annotated[str, Meta(min_length=1, max_length=64, extra_json_schema={"pattern": ID_PATTERN}),
               _ID_CHARS]
EventId = Annotated[str, Meta(min_length=1, max_length=128,
                              extra_json_schema={"pattern": ID_PATTERN}), _ID_CHARS]
Name = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9_\-]+\Z")]
# Epoch milliseconds; the floor catches a clock sending seconds instead of ms.
EpochMs = Annotated[int, Meta(ge=946_684_800_000, le=32_503_680_000_000)]
Qty = Annotated[int, Meta(ge=1, le=999)]
StockQty = Annotated[int, Meta(ge=0, le=10_000_000)]
Price = Annotated[float, Meta(ge=0, le=10_000_000)]
Text = Annotated[str, Meta(max_length=500)]
Label = Annotated[str, Meta(max_length=200)]

Role = Literal["platform", "commerce", "host"]


class Event(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True,
            kw_only=True):
    """Fields every event has. `role` says which token may send it and which topic holds it."""

    role: ClassVar[Role]
    event_id: EventId
    room_id: Id
    ts: EpochMs


class ViewerEvent(Event, frozen=True, kw_only=True):
    role: ClassVar[Role] = "platform"
    viewer_id: Id


class OrderEvent(ViewerEvent, frozen=True, kw_only=True):
    role: ClassVar[Role] = "commerce"
    order_id: Id


class HostEvent(Event, frozen=True, kw_only=True):
    role: ClassVar[Role] = "host"


# --- viewer events (platform token, keyed by viewer_id) ---------------------------------

class ViewerJoined(ViewerEvent, tag="viewer.joined", frozen=True, kw_only=True):
    source: Name
    leader_id: Id | None = None
    region: Label | None = None
    tz: Annotated[str, Meta(max_length=64)] | None = None
    returning: bool | None = None

    def __post_init__(self) -> None:
        if self.tz is not None:
            try:
                zoneinfo.ZoneInfo(self.tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # 'America' is a folder
                raise ValueError(f"tz: unknown IANA time zone {self.tz!r}") from None


class ViewerLeft(ViewerEvent, tag="viewer.left", frozen=True, kw_only=True):
    pass


class ViewerHeartbeat(ViewerEvent, tag="viewer.heartbeat", frozen=True, kw_only=True):
    pass


class ProductViewed(ViewerEvent, tag="product.viewed", frozen=True, kw_only=True):
    sku: Id


class Like(ViewerEvent, tag="interaction.like", frozen=True, kw_only=True):
    count: Annotated[int, Meta(ge=1, le=10_000)] = 1


class Comment(ViewerEvent, tag="interaction.comment", frozen=True, kw_only=True):
    text: Text


class Share(ViewerEvent, tag="interaction.share", frozen=True, kw_only=True):
    pass


class FanJoined(ViewerEvent, tag="fan.joined", frozen=True, kw_only=True):
    pass


class CartClicked(ViewerEvent, tag="cart.clicked", frozen=True, kw_only=True):
    sku: Id


class CartAdded(ViewerEvent, tag="cart.added", frozen=True, kw_only=True):
    sku: Id
    qty: Qty


# --- order events (commerce token, keyed by viewer_id) ----------------------------------

class OrderItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    sku: Id
    qty: Qty
    price: Price


class OrderPlaced(OrderEvent, tag="order.placed", frozen=True, kw_only=True):
    items: Annotated[list[OrderItem], Meta(min_length=1, max_length=50)]

    def __post_init__(self) -> None:
        skus = [item.sku for item in self.items]
        if len(set(skus)) != len(skus):
            raise ValueError("items: the same sku appears twice; merge the lines")


class OrderPaid(OrderEvent, tag="order.paid", frozen=True, kw_only=True):
    pass


class OrderCancelled(OrderEvent, tag="order.cancelled", frozen=True, kw_only=True):
    pass


class OrderPaymentFailed(OrderEvent, tag="order.payment_failed", frozen=True, kw_only=True):
    reason: Label


# --- host events (host token, keyed by room_id) -----------------------------------------

class SegmentStarted(HostEvent, tag="segment.started", frozen=True, kw_only=True):
    segment: Name
    label: Label = ""
    sku: Id | None = None


class ProductPinned(HostEvent, tag="product.pinned", frozen=True, kw_only=True):
    sku: Id


class BroadcastStarted(HostEvent, tag="broadcast.started", frozen=True, kw_only=True):
    # The host console may name the broadcast; else it is `<room_id>@<ts>`.
    broadcast_id: Id | None = None


class BroadcastEnded(HostEvent, tag="broadcast.ended", frozen=True, kw_only=True):
    pass


# A hot SKU's stock split over this many buckets on their own slots (see buckets.py): 64
# covers a cluster of 64 masters, one bucket each; more buckets than units is pointless.
Buckets = Annotated[int, Meta(ge=1, le=64)]


class StockSet(HostEvent, tag="stock.set", frozen=True, kw_only=True):
    sku: Id
    qty: StockQty
    name: Label | None = None
    price: Price | None = None
    # Chosen at the SKU's first load and kept after (a later value is ignored).
    buckets: Buckets | None = None


AnyEvent = (
    ViewerJoined | ViewerLeft | ViewerHeartbeat | ProductViewed | Like | Comment | Share
    | FanJoined | CartClicked | CartAdded
    | OrderPlaced | OrderPaid | OrderCancelled | OrderPaymentFailed
    | SegmentStarted | ProductPinned | BroadcastStarted | BroadcastEnded | StockSet
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls
    for cls in AnyEvent.__args__
}


# --- outputs ----------------------------------------------------------------------------

class Output(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of records the worker writes; `ts` is the event time that caused them."""


class StockUpdate(Output, frozen=True, kw_only=True):
    room_id: str
    sku: str
    available: int
    reserved: int
    sold: int
    version: int  # grows with every change of this SKU: readers keep the highest
    ts: int


OrderStatus = Literal["reserved", "confirmed", "released", "rejected"]


class OrderResult(Output, frozen=True, kw_only=True):
    order_id: str
    room_id: str
    viewer_id: str
    status: OrderStatus
    reason: str | None = None
    ts: int


class Nudge(Output, frozen=True, kw_only=True):
    viewer_id: str
    room_id: str
    rule_id: str
    sku: str | None
    message: str
    variant: Literal["treatment", "holdout"]
    channel: str
    ts: int


class TagChange(Output, frozen=True, kw_only=True):
    viewer_id: str
    room_id: str
    tag: str
    value: str
    op: Literal["add", "remove"]
    ts: int


class FollowUp(Output, frozen=True, kw_only=True):
    viewer_id: str
    room_id: str
    segment: str
    action: str
    due_at: int


class Origin(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where a dead letter came from: a Kafka position, or the gateway with its index."""

    source: Literal["kafka", "gateway"]
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    index: int | None = None


class DeadLetter(Output, frozen=True, kw_only=True):
    raw: str
    error: str
    origin: Origin
    ts: int
