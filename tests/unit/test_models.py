"""Unit tests for the input event schema (stream/core/models.py, with the id check of
stream/core/codec.py): pure, no servers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stream.core.codec import decode_events
from stream.core.models import (
    EVENT_TYPES,
    AnyEvent,
    Event,
    OrderItem,
    OrderPlaced,
    ViewerJoined,
)

TS = 1_700_000_000_000  # 2023-11-14, epoch ms

# The 19 tags of the SPEC's "Events in" table, with the role whose token may send them.
SPEC_ROLES: dict[str, str] = {
    "viewer.joined": "platform",
    "viewer.left": "platform",
    "viewer.heartbeat": "platform",
    "product.viewed": "platform",
    "interaction.like": "platform",
    "interaction.comment": "platform",
    "interaction.share": "platform",
    "fan.joined": "platform",
    "cart.clicked": "platform",
    "cart.added": "platform",
    "order.placed": "commerce",
    "order.paid": "commerce",
    "order.cancelled": "commerce",
    "order.payment_failed": "commerce",
    "segment.started": "host",
    "product.pinned": "host",
    "broadcast.started": "host",
    "broadcast.ended": "host",
    "stock.set": "host",
}

_COMMON: dict[str, Any] = {"event_id": "evt-1", "room_id": "room-1", "ts": TS}
_VIEWER: dict[str, Any] = {**_COMMON, "viewer_id": "viewer-1"}
_ORDER: dict[str, Any] = {**_VIEWER, "order_id": "order-1"}
_ITEM: dict[str, Any] = {"sku": "rice-5kg", "qty": 2, "price": 59.9}

# Only the required fields of each type.
MINIMAL: dict[str, dict[str, Any]] = {
    "viewer.joined": {**_VIEWER, "source": "douyin"},
    "viewer.left": dict(_VIEWER),
    "viewer.heartbeat": dict(_VIEWER),
    "product.viewed": {**_VIEWER, "sku": "rice-5kg"},
    "interaction.like": dict(_VIEWER),
    "interaction.comment": {**_VIEWER, "text": "宝宝能吃吗"},
    "interaction.share": dict(_VIEWER),
    "fan.joined": dict(_VIEWER),
    "cart.clicked": {**_VIEWER, "sku": "rice-5kg"},
    "cart.added": {**_VIEWER, "sku": "rice-5kg", "qty": 1},
    "order.placed": {**_ORDER, "items": [dict(_ITEM)]},
    "order.paid": dict(_ORDER),
    "order.cancelled": dict(_ORDER),
    "order.payment_failed": {**_ORDER, "reason": "card_declined"},
    "segment.started": {**_COMMON, "segment": "intro"},
    "product.pinned": {**_COMMON, "sku": "rice-5kg"},
    "broadcast.started": {**_COMMON, "broadcast_id": "evening-1"},
    "broadcast.ended": dict(_COMMON),
    "stock.set": {**_COMMON, "sku": "rice-5kg", "qty": 0},
}

# Every field of each type, optional ones included (floats for floats, so that the
# decoded struct turns back into exactly this dict).
FULL: dict[str, dict[str, Any]] = {
    **MINIMAL,
    "viewer.joined": {
        **_VIEWER,
        "source": "leader_share",
        "leader_id": "leader-7",
        "region": "华东/上海",
        "tz": "Asia/Shanghai",
        "returning": True,
    },
    "interaction.like": {**_VIEWER, "count": 10_000},
    "interaction.comment": {**_VIEWER, "text": "小包装" * 10},
    "cart.added": {**_VIEWER, "sku": "oil-1l", "qty": 999},
    "order.placed": {
        **_ORDER,
        "items": [
            {"sku": "rice-5kg", "qty": 1, "price": 59.9},
            {"sku": "oil-1l", "qty": 999, "price": 0.0},
        ],
    },
    "segment.started": {**_COMMON, "segment": "promo", "label": "限时秒杀", "sku": "oil-1l"},
    "stock.set": {
        **_COMMON,
        "sku": "rice-5kg",
        "qty": 10_000_000,
        "name": "有机胚芽米",
        "price": 10_000_000.0,
        "buckets": 64,
    },
}


def payload(tag: str, fields: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"type": tag, **fields})


def decode(data: bytes) -> Event:
    """One event through the boundary's checks: msgspec's, then the characters of ids,
    which codec checks once per body (models.IdChars). A refusal raises
    msgspec.ValidationError with the message a client gets."""
    event: Event = msgspec.json.decode(data, type=AnyEvent)  # type: ignore[arg-type]
    decoded = decode_events(data)
    if decoded.rejected:
        raise msgspec.ValidationError(decoded.rejected[0].error)
    return event


def reject(tag: str, fields: dict[str, Any]) -> str:
    """Decode a payload that must be refused; return msgspec's message."""
    with pytest.raises(msgspec.ValidationError) as info:
        decode(payload(tag, fields))
    return str(info.value)


def at(path: str) -> str:
    """The suffix msgspec appends to an error about the value at `$.path`."""
    return f" - at `$.{path}`"


def with_(tag: str, **changes: Any) -> dict[str, Any]:
    return {**MINIMAL[tag], **changes}


def required_fields(cls: type[Event]) -> list[str]:
    return [
        f.name
        for f in msgspec.structs.fields(cls)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]


REQUIRED = [
    pytest.param(tag, name, id=f"{tag}-{name}")
    for tag, cls in EVENT_TYPES.items()
    for name in required_fields(cls)
]


# --- the set of types ------------------------------------------------------------------


def test_event_types_are_the_spec_tags() -> None:
    assert set(EVENT_TYPES) == set(SPEC_ROLES)
    assert len(EVENT_TYPES) == 19
    assert set(MINIMAL) == set(FULL) == set(SPEC_ROLES)


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_tag_matches_class(tag: str) -> None:
    cls = EVENT_TYPES[tag]
    assert cls.__struct_config__.tag == tag
    assert cls.__struct_config__.tag_field == "type"
    assert cls.__struct_config__.forbid_unknown_fields


@pytest.mark.parametrize(("tag", "role"), sorted(SPEC_ROLES.items()))
def test_role(tag: str, role: str) -> None:
    assert EVENT_TYPES[tag].role == role


def test_every_type_has_the_common_fields() -> None:
    for tag, cls in EVENT_TYPES.items():
        names = set(required_fields(cls))
        assert {"event_id", "room_id", "ts"} <= names, tag
        # SPEC: viewer and order events carry viewer_id (the partition key); host ones don't.
        assert ("viewer_id" in names) == (SPEC_ROLES[tag] != "host"), tag
        if tag.startswith("order."):
            assert "order_id" in names


# --- valid events ----------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(MINIMAL))
def test_minimal_example_decodes_and_round_trips(tag: str) -> None:
    event = decode(payload(tag, MINIMAL[tag]))
    assert type(event) is EVENT_TYPES[tag]
    built = msgspec.to_builtins(event)
    assert built["type"] == tag
    for name, value in MINIMAL[tag].items():
        assert built[name] == value, name
    encoded = msgspec.json.encode(event)
    again = decode(encoded)
    assert again == event
    assert msgspec.json.encode(again) == encoded


@pytest.mark.parametrize("tag", sorted(FULL))
def test_full_example_decodes_and_round_trips(tag: str) -> None:
    event = decode(payload(tag, FULL[tag]))
    assert type(event) is EVENT_TYPES[tag]
    # Every field present in the input, nothing dropped or added.
    assert msgspec.to_builtins(event) == {"type": tag, **FULL[tag]}
    assert decode(msgspec.json.encode(event)) == event


def test_full_examples_set_every_field() -> None:
    for tag, cls in EVENT_TYPES.items():
        assert set(FULL[tag]) == set(cls.__struct_fields__), tag


def test_defaults() -> None:
    like = decode(payload("interaction.like", MINIMAL["interaction.like"]))
    assert like.count == 1  # type: ignore[attr-defined]
    joined = decode(payload("viewer.joined", MINIMAL["viewer.joined"]))
    assert isinstance(joined, ViewerJoined)
    assert (joined.leader_id, joined.region, joined.tz, joined.returning) == (None,) * 4


def test_order_items_decode_to_structs() -> None:
    event = decode(payload("order.placed", FULL["order.placed"]))
    assert isinstance(event, OrderPlaced)
    assert event.items == [OrderItem("rice-5kg", 1, 59.9), OrderItem("oil-1l", 999, 0.0)]


def test_integer_price_is_accepted_as_float() -> None:
    event = decode(payload("order.placed", with_("order.placed", items=[{**_ITEM, "price": 60}])))
    assert isinstance(event, OrderPlaced)
    assert event.items[0].price == 60.0
    assert isinstance(event.items[0].price, float)


def test_events_are_frozen() -> None:
    event = decode(payload("viewer.left", MINIMAL["viewer.left"]))
    with pytest.raises(AttributeError):
        event.ts = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("tag", "fields"),
    [
        ("viewer.joined", with_("viewer.joined", tz="UTC")),
        ("viewer.joined", with_("viewer.joined", tz="America/New_York")),
        ("viewer.joined", with_("viewer.joined", tz=None)),
        ("interaction.comment", with_("interaction.comment", text="宝" * 500)),
        ("interaction.comment", with_("interaction.comment", text="")),
        ("interaction.like", with_("interaction.like", count=1)),
        ("stock.set", with_("stock.set", qty=0, price=0)),
        ("cart.added", with_("cart.added", qty=999)),
        ("viewer.left", with_("viewer.left", event_id="e" * 128, room_id="r" * 64)),
        ("viewer.left", with_("viewer.left", viewer_id="wx:user@corp.cn-1_2")),
        ("viewer.left", with_("viewer.left", ts=946_684_800_000)),
        ("viewer.left", with_("viewer.left", ts=32_503_680_000_000)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_boundary_values_are_accepted(tag: str, fields: dict[str, Any]) -> None:
    assert type(decode(payload(tag, fields))) is EVENT_TYPES[tag]


# --- invalid events: every message names the field -------------------------------------


@pytest.mark.parametrize(("tag", "name"), REQUIRED)
def test_missing_required_field(tag: str, name: str) -> None:
    fields = FULL[tag].copy()
    del fields[name]
    assert reject(tag, fields) == f"Object missing required field `{name}`"


def test_missing_type() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `type`"):
        decode(msgspec.json.encode(MINIMAL["viewer.left"]))


@pytest.mark.parametrize("name", ["sku", "qty", "price"])
def test_missing_order_item_field(name: str) -> None:
    item = dict(_ITEM)
    del item[name]
    message = reject("order.placed", with_("order.placed", items=[item]))
    assert message == f"Object missing required field `{name}`{at('items[0]')}"


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
@pytest.mark.parametrize("bad_ts", ["1700000000000", 1.7e12, True, None, [TS]])
def test_wrong_type_for_ts(tag: str, bad_ts: Any) -> None:
    message = reject(tag, with_(tag, ts=bad_ts))
    assert message.startswith("Expected `int`, got ")
    assert message.endswith(at("ts"))


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_ts_in_seconds_is_refused(tag: str) -> None:
    message = reject(tag, with_(tag, ts=TS // 1000))
    assert message == f"Expected `int` >= 946684800000{at('ts')}"


def test_ts_too_far_ahead_is_refused() -> None:
    message = reject("viewer.left", with_("viewer.left", ts=TS * 1000))  # microseconds
    assert message.endswith(at("ts"))


@pytest.mark.parametrize("tag", sorted(EVENT_TYPES))
def test_unknown_field(tag: str) -> None:
    assert reject(tag, with_(tag, coupon="x")) == "Object contains unknown field `coupon`"


def test_unknown_field_in_order_item() -> None:
    message = reject("order.placed", with_("order.placed", items=[{**_ITEM, "discount": 1}]))
    assert message == f"Object contains unknown field `discount`{at('items[0]')}"


def test_viewer_id_on_host_event_is_unknown() -> None:
    message = reject("stock.set", with_("stock.set", viewer_id="viewer-1"))
    assert message == "Object contains unknown field `viewer_id`"


@pytest.mark.parametrize(
    "bad_type", ["viewer.kicked", "ViewerJoined", "Event", "", "VIEWER.JOINED"]
)
def test_unknown_type(bad_type: str) -> None:
    message = reject(bad_type, MINIMAL["viewer.joined"])
    assert message == f"Invalid value {bad_type!r}{at('type')}"


def test_type_not_a_string() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.type`"):
        decode(msgspec.json.encode({**MINIMAL["viewer.left"], "type": 3}))


_ID_FIELDS = [
    ("viewer.left", "event_id", 128),
    ("viewer.left", "room_id", 64),
    ("viewer.left", "viewer_id", 64),
    ("order.paid", "order_id", 64),
    ("product.viewed", "sku", 64),
    ("cart.added", "sku", 64),
    ("stock.set", "sku", 64),
    ("viewer.joined", "leader_id", 64),
    ("segment.started", "sku", 64),
]


@pytest.mark.parametrize(("tag", "name", "limit"), _ID_FIELDS)
@pytest.mark.parametrize("bad", ["room{1}", "{", "a b", " a", "a\tb", "", "房间", "a/b", "\n"])
def test_bad_id_characters(tag: str, name: str, limit: int, bad: str) -> None:
    message = reject(tag, with_(tag, **{name: bad}))
    assert message.startswith("Expected `str` ")
    assert message.endswith(at(name))


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        ("viewer.left", "room_id"),
        ("viewer.left", "viewer_id"),
        ("viewer.left", "event_id"),
        ("viewer.joined", "source"),
        ("segment.started", "segment"),
    ],
)
def test_trailing_newline_in_id_is_refused(tag: str, name: str) -> None:
    message = reject(tag, with_(tag, **{name: MINIMAL[tag][name] + "\n"}))
    assert message.endswith(at(name))


@pytest.mark.parametrize(("tag", "name", "limit"), _ID_FIELDS)
def test_id_too_long(tag: str, name: str, limit: int) -> None:
    assert type(decode(payload(tag, with_(tag, **{name: "x" * limit})))) is EVENT_TYPES[tag]
    message = reject(tag, with_(tag, **{name: "x" * (limit + 1)}))
    assert message == f"Expected `str` of length <= {limit}{at(name)}"


def test_order_item_sku_with_brace() -> None:
    message = reject("order.placed", with_("order.placed", items=[{**_ITEM, "sku": "{x}"}]))
    assert message.endswith(at("items[0].sku"))


@pytest.mark.parametrize("qty", [0, -1, 1000])
def test_cart_added_qty_out_of_range(qty: int) -> None:
    message = reject("cart.added", with_("cart.added", qty=qty))
    bound = ">= 1" if qty < 1 else "<= 999"
    assert message == f"Expected `int` {bound}{at('qty')}"


@pytest.mark.parametrize("qty", [0, -1, 1000])
def test_order_item_qty_out_of_range(qty: int) -> None:
    items = [dict(_ITEM), {"sku": "oil-1l", "qty": qty, "price": 1.0}]
    message = reject("order.placed", with_("order.placed", items=items))
    bound = ">= 1" if qty < 1 else "<= 999"
    assert message == f"Expected `int` {bound}{at('items[1].qty')}"


def test_qty_not_an_int() -> None:
    message = reject("cart.added", with_("cart.added", qty=1.5))
    assert message == f"Expected `int`, got `float`{at('qty')}"


def test_empty_items() -> None:
    message = reject("order.placed", with_("order.placed", items=[]))
    assert message == f"Expected `array` of length >= 1{at('items')}"


def test_too_many_items() -> None:
    items = [{"sku": f"sku-{i}", "qty": 1, "price": 1.0} for i in range(51)]
    message = reject("order.placed", with_("order.placed", items=items))
    assert message == f"Expected `array` of length <= 50{at('items')}"


def test_items_not_a_list() -> None:
    message = reject("order.placed", with_("order.placed", items=_ITEM))
    assert message.endswith(at("items"))


def test_same_sku_twice_in_order() -> None:
    items = [dict(_ITEM), {"sku": "oil-1l", "qty": 1, "price": 9.9}, {**_ITEM, "qty": 1}]
    message = reject("order.placed", with_("order.placed", items=items))
    assert message.startswith("items:")
    assert "same sku" in message


def test_same_sku_check_also_applies_to_direct_construction() -> None:
    with pytest.raises(ValueError, match=r"^items:"):
        OrderPlaced(**{**_ORDER, "items": [OrderItem("a", 1, 1.0), OrderItem("a", 2, 1.0)]})


def test_comment_text_too_long() -> None:
    message = reject("interaction.comment", with_("interaction.comment", text="宝" * 501))
    assert message == f"Expected `str` of length <= 500{at('text')}"


@pytest.mark.parametrize(
    "tz",
    [
        "Mars/Olympus_Mons",
        "Asia/Shang hai",
        "asia/shanghai-x",
        "",
        "../x",
        "/etc/localtime",
        "UTC/",
    ],
)
def test_unknown_tz(tz: str) -> None:
    message = reject("viewer.joined", with_("viewer.joined", tz=tz))
    assert message.startswith("tz:")
    assert "IANA" in message


def test_tz_too_long() -> None:
    message = reject("viewer.joined", with_("viewer.joined", tz="A" * 65))
    assert message == f"Expected `str` of length <= 64{at('tz')}"


def test_tz_naming_a_directory_is_a_validation_error() -> None:
    message = reject("viewer.joined", with_("viewer.joined", tz="America"))
    assert message.startswith("tz:")


@pytest.mark.parametrize("qty", [-1, 10_000_001])
def test_stock_set_qty_out_of_range(qty: int) -> None:
    message = reject("stock.set", with_("stock.set", qty=qty))
    assert message.endswith(at("qty"))
    assert message.startswith("Expected `int` ")


@pytest.mark.parametrize(("buckets", "expected"), [(0, ">= 1"), (65, "<= 64"), ("8", None)])
def test_stock_set_buckets_out_of_range(buckets: object, expected: str | None) -> None:
    message = reject("stock.set", with_("stock.set", buckets=buckets))
    assert message.endswith(at("buckets"))
    assert expected is None or expected in message, message


def test_negative_price_in_order_item() -> None:
    message = reject("order.placed", with_("order.placed", items=[{**_ITEM, "price": -0.01}]))
    assert message == f"Expected `float` >= 0.0{at('items[0].price')}"


def test_negative_price_in_stock_set() -> None:
    message = reject("stock.set", with_("stock.set", price=-1))
    assert message == f"Expected `float` >= 0.0{at('price')}"


def test_price_as_string() -> None:
    message = reject("stock.set", with_("stock.set", price="9.9"))
    assert message.endswith(at("price"))


@pytest.mark.parametrize("count", [0, 10_001])
def test_like_count_out_of_range(count: int) -> None:
    assert reject("interaction.like", with_("interaction.like", count=count)).endswith(at("count"))


@pytest.mark.parametrize("source", ["Douyin", "", "wecom group", "x" * 33])
def test_bad_source_name(source: str) -> None:
    assert reject("viewer.joined", with_("viewer.joined", source=source)).endswith(at("source"))


def test_returning_must_be_bool() -> None:
    message = reject("viewer.joined", with_("viewer.joined", returning="yes"))
    assert message == f"Expected `bool | null`, got `str`{at('returning')}"


def test_label_too_long() -> None:
    message = reject("segment.started", with_("segment.started", label="x" * 201))
    assert message == f"Expected `str` of length <= 200{at('label')}"


def test_top_level_not_an_object() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Expected `object`, got `array`"):
        decode(b"[]")
