"""Unit tests for the boundary codec (stream/codec.py): pure, no servers."""

from __future__ import annotations

import string
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import Meta

from stream.core.codec import BodyError, Decoded, clock_error, decode_events, encode, envelope
from stream.core.models import (
    EVENT_TYPES,
    ID_PATTERN,
    CartAdded,
    Comment,
    Event,
    OrderCancelled,
    OrderItem,
    OrderPlaced,
    SegmentStarted,
    StockSet,
    ViewerJoined,
    ViewerLeft,
)
from stream.local import showplan

TS = 1_700_000_000_000
_VIEWER: dict[str, Any] = {
    "event_id": "e1",
    "room_id": "room-1",
    "ts": TS,
    "viewer_id": "viewer-1",
}


def ev(tag: str, **fields: Any) -> bytes:
    return msgspec.json.encode({"type": tag, **_VIEWER, **fields})


GOOD_JOIN = ev("viewer.joined", event_id="g0", source="douyin", tz="Asia/Shanghai")
GOOD_CART = ev("cart.added", event_id="g2", sku="rice-5kg", qty=3)
GOOD_ORDER = ev(
    "order.placed",
    event_id="g4",
    order_id="o-1",
    items=[{"sku": "rice-5kg", "qty": 1, "price": 59.9}],
)
BAD_TS = ev("viewer.left", event_id="b1", ts="yesterday")
BAD_QTY = ev("cart.added", event_id="b3", sku="rice-5kg", qty=1000)
BAD_TYPE = ev("viewer.kicked", event_id="b5")
BAD_MISSING = msgspec.json.encode({"type": "viewer.left", "event_id": "b6", "room_id": "r"})
BAD_UNKNOWN = ev("viewer.left", event_id="b7", coupon="x")
BAD_DUP_SKU = ev(
    "order.placed",
    event_id="b8",
    order_id="o-2",
    items=[{"sku": "a", "qty": 1, "price": 1.0}, {"sku": "a", "qty": 2, "price": 1.0}],
)
BAD_TZ = ev("viewer.joined", event_id="b9", source="douyin", tz="Mars/Olympus")
BAD_NOT_OBJECT = b"42"

# (raw item, the field its error must name or None for good items)
MIXED: list[tuple[bytes, str | None]] = [
    (GOOD_JOIN, None),
    (BAD_TS, "`$.ts`"),
    (GOOD_CART, None),
    (BAD_QTY, "`$.qty`"),
    (GOOD_ORDER, None),
    (BAD_TYPE, "`$.type`"),
    (BAD_MISSING, "`ts`"),
    (BAD_UNKNOWN, "`coupon`"),
    (BAD_DUP_SKU, "items:"),
    (BAD_TZ, "tz:"),
    (BAD_NOT_OBJECT, "`object`"),
]


def _one(raw: bytes) -> Event:
    decoded = decode_events(raw)
    assert not decoded.rejected
    [(index, event)] = decoded.events
    assert index == 0
    return event


def check_mixed(decoded: Decoded, items: list[tuple[bytes, str | None]]) -> None:
    good = [(i, _one(raw)) for i, (raw, bad) in enumerate(items) if bad is None]
    assert decoded.events == good
    bad = [(i, raw, field) for i, (raw, field) in enumerate(items) if field is not None]
    assert [r.index for r in decoded.rejected] == [i for i, _, _ in bad]
    for rejection, (_, raw, field) in zip(decoded.rejected, bad, strict=True):
        assert rejection.raw == raw
        assert isinstance(rejection.raw, bytes)
        assert field in rejection.error, (rejection.error, field)


# --- JSON arrays -----------------------------------------------------------------------


def test_array_mixed_good_and_bad() -> None:
    body = b"[" + b",".join(raw for raw, _ in MIXED) + b"]"
    check_mixed(decode_events(body), MIXED)


def test_array_mixed_with_whitespace_keeps_raw_items_exactly() -> None:
    body = b"\n [\n  " + b" ,\n\t ".join(raw for raw, _ in MIXED) + b"\n ]\n"
    check_mixed(decode_events(body), MIXED)


def test_array_errors_are_relative_to_the_item() -> None:
    body = envelope([GOOD_JOIN, BAD_TS])
    [rejection] = decode_events(body).rejected
    assert rejection.index == 1
    assert rejection.error == "Expected `int`, got `str` - at `$.ts`"


def test_array_nested_error_path() -> None:
    bad = ev("order.placed", order_id="o", items=[{"sku": "a", "qty": 1, "price": -1}])
    [rejection] = decode_events(envelope([bad])).rejected
    assert rejection.error == "Expected `float` >= 0.0 - at `$.items[0].price`"


def test_array_all_good() -> None:
    decoded = decode_events(envelope([GOOD_JOIN, GOOD_CART, GOOD_ORDER]))
    assert [i for i, _ in decoded.events] == [0, 1, 2]
    assert [type(e) for _, e in decoded.events] == [ViewerJoined, CartAdded, OrderPlaced]
    assert decoded.rejected == []


def test_array_all_bad() -> None:
    decoded = decode_events(envelope([BAD_TS, BAD_QTY]))
    assert decoded.events == []
    assert [r.index for r in decoded.rejected] == [0, 1]


def test_empty_array() -> None:
    assert decode_events(b"[]") == Decoded()
    assert decode_events(b" [ ] ") == Decoded()


# --- NDJSON ----------------------------------------------------------------------------


def test_ndjson_with_malformed_line_and_blank_lines() -> None:
    body = b"\n".join(
        [
            b"",
            GOOD_JOIN,
            b"   ",
            b'{"type": "viewer.left", "event_id": ',  # cut off
            b"",
            GOOD_CART,
            BAD_QTY,
            b"\t",
            GOOD_ORDER,
            b"",
        ]
    )
    decoded = decode_events(body)
    # Blank lines are not items: indexes count the non-blank lines.
    assert decoded.events == [(0, _one(GOOD_JOIN)), (2, _one(GOOD_CART)), (4, _one(GOOD_ORDER))]
    assert [r.index for r in decoded.rejected] == [1, 3]
    malformed, qty = decoded.rejected
    assert malformed.raw == b'{"type": "viewer.left", "event_id": '
    assert qty.raw == BAD_QTY
    assert qty.error.endswith("- at `$.qty`")


def test_ndjson_all_good() -> None:
    decoded = decode_events(GOOD_JOIN + b"\n" + GOOD_CART + b"\n")
    assert decoded.events == [(0, _one(GOOD_JOIN)), (1, _one(GOOD_CART))]
    assert decoded.rejected == []


def test_ndjson_crlf() -> None:
    decoded = decode_events(GOOD_JOIN + b"\r\n" + GOOD_CART + b"\r\n")
    assert [e for _, e in decoded.events] == [_one(GOOD_JOIN), _one(GOOD_CART)]
    assert decoded.rejected == []


def test_ndjson_mixed() -> None:
    body = b"\n".join(raw for raw, _ in MIXED)
    check_mixed(decode_events(body), MIXED)


# --- a single object -------------------------------------------------------------------


def test_single_object() -> None:
    decoded = decode_events(GOOD_ORDER)
    assert decoded.rejected == []
    [(index, event)] = decoded.events
    assert index == 0
    assert isinstance(event, OrderPlaced)
    assert event.items == [OrderItem("rice-5kg", 1, 59.9)]


def test_single_object_surrounded_by_whitespace() -> None:
    assert decode_events(b"\n  " + GOOD_CART + b"  \n\n").events == [(0, _one(GOOD_CART))]


def test_single_invalid_object_is_a_rejection_not_a_body_error() -> None:
    decoded = decode_events(BAD_TS)
    assert decoded.events == []
    [rejection] = decoded.rejected
    assert (rejection.index, rejection.raw) == (0, BAD_TS)
    assert rejection.error.endswith("- at `$.ts`")


@pytest.mark.parametrize("scalar", [b"42", b'"hello"', b"null", b"true"])
def test_single_json_scalar_is_a_rejection(scalar: bytes) -> None:
    decoded = decode_events(scalar)
    assert decoded.events == []
    [rejection] = decoded.rejected
    assert rejection.index == 0
    assert "Expected `object`" in rejection.error


def test_pretty_printed_single_object() -> None:
    pretty = msgspec.json.format(GOOD_CART, indent=2)
    assert b"\n" in pretty
    assert decode_events(pretty).events == [(0, _one(GOOD_CART))]


# --- bodies that are not JSON ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" + GOOD_JOIN,  # array never closed
        b"[" + GOOD_JOIN + b",]",
        b"[" + GOOD_JOIN + b"] trailing",
        b"[1, 2",
        b"[{]",
        b"[" + GOOD_JOIN + b"]\n[" + GOOD_CART + b"]",
        b"not json",
        b"{",
        b"<html></html>",
        b"\xff\xfe\x00",
    ],
)
def test_not_json_is_a_body_error(body: bytes) -> None:
    with pytest.raises(BodyError, match="not valid JSON"):
        decode_events(body)


@pytest.mark.parametrize("body", [b"", b" ", b"\n\n", b"\r\n\t "])
def test_empty_body_is_a_body_error(body: bytes) -> None:
    with pytest.raises(BodyError, match="empty body"):
        decode_events(body)


def test_body_error_is_a_value_error() -> None:
    assert issubclass(BodyError, ValueError)


def test_multi_line_garbage_is_a_body_error() -> None:
    with pytest.raises(BodyError):
        decode_events(b"hello\nworld\n")


def test_directory_tz_rejects_only_that_item() -> None:
    bad = ev("viewer.joined", event_id="b", source="douyin", tz="America")
    decoded = decode_events(envelope([GOOD_CART, bad]))
    assert decoded.events == [(0, _one(GOOD_CART))]
    assert [r.index for r in decoded.rejected] == [1]


# --- clock_error -----------------------------------------------------------------------

_NOW = 1_750_000_000_000
_LIMIT = 300_000


def _at(ts: int) -> ViewerLeft:
    return ViewerLeft(event_id="e", room_id="r", viewer_id="v", ts=ts)


@pytest.mark.parametrize("ts", [_NOW - 86_400_000, _NOW - 1, _NOW, _NOW + 1, _NOW + _LIMIT])
def test_clock_error_none_in_past_or_within_limit(ts: int) -> None:
    assert clock_error(_at(ts), now_ms=_NOW, max_future_ms=_LIMIT) is None


def test_clock_error_too_far_ahead() -> None:
    message = clock_error(_at(_NOW + 301_000), now_ms=_NOW, max_future_ms=_LIMIT)
    assert message is not None
    assert message.startswith("ts:")
    assert "`$.ts`" in message
    assert "301 s" in message
    assert "300 s" in message


def test_clock_error_one_ms_past_the_limit() -> None:
    assert clock_error(_at(_NOW + _LIMIT + 1), now_ms=_NOW, max_future_ms=_LIMIT) is not None


def test_clock_error_host_event() -> None:
    event = StockSet(event_id="e", room_id="r", ts=_NOW + 10**9, sku="s", qty=1)
    assert clock_error(event, now_ms=_NOW, max_future_ms=_LIMIT) is not None


# --- encode / envelope -----------------------------------------------------------------

EVENTS: list[Event] = [
    ViewerJoined(
        event_id="a", room_id="r", ts=TS, viewer_id="v", source="douyin", tz="UTC", returning=True
    ),
    Comment(event_id="b", room_id="r", ts=TS + 1, viewer_id="v", text='宝宝能吃吗\n"小包装"'),
    CartAdded(event_id="c", room_id="r", ts=TS + 2, viewer_id="v", sku="rice", qty=2),
    OrderPlaced(
        event_id="d",
        room_id="r",
        ts=TS + 3,
        viewer_id="v",
        order_id="o",
        items=[OrderItem("rice", 2, 59.9), OrderItem("oil", 1, 0.0)],
    ),
    SegmentStarted(event_id="e", room_id="r", ts=TS + 4, segment="promo", label="秒杀"),
    StockSet(event_id="f", room_id="r", ts=TS + 5, sku="rice", qty=100, price=59.9),
]


def test_envelope_of_encoded_events_decodes_back() -> None:
    decoded = decode_events(envelope([encode(e) for e in EVENTS]))
    assert decoded.rejected == []
    assert decoded.events == list(enumerate(EVENTS))


def test_envelope_empty() -> None:
    assert envelope([]) == b"[]"
    assert decode_events(envelope([])) == Decoded()


def test_encode_carries_the_type_tag() -> None:
    for event in EVENTS:
        data = msgspec.json.decode(encode(event))
        assert data["type"] == type(event).__struct_config__.tag


def test_encoded_events_as_ndjson_decode_back() -> None:
    decoded = decode_events(b"\n".join(encode(e) for e in EVENTS))
    assert decoded.events == list(enumerate(EVENTS))


# --- property: valid items are kept, in order, whatever junk is around them ------------

_ID_CHARS = string.ascii_letters + string.digits + "._:@-"
ids = st.text(_ID_CHARS, min_size=1, max_size=64)
ts_ms = st.integers(946_684_800_000, 32_503_680_000_000)
names = st.text(string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=32)
qtys = st.integers(1, 999)
prices = st.floats(0, 10_000_000, allow_nan=False)
event_ids = st.text(_ID_CHARS, min_size=1, max_size=128)
_common: dict[str, Any] = {"event_id": event_ids, "room_id": ids, "ts": ts_ms}
_viewer: dict[str, Any] = {**_common, "viewer_id": ids}

order_items = st.lists(st.builds(OrderItem, ids, qtys, prices), min_size=1, max_size=50).filter(
    lambda items: len({i.sku for i in items}) == len(items)
)
valid_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(ViewerLeft, **_viewer),
    st.builds(
        ViewerJoined,
        **_viewer,
        source=names,
        tz=st.sampled_from([None, "UTC", "Asia/Shanghai", "Europe/Berlin"]),
        returning=st.none() | st.booleans(),
        region=st.none() | st.text(max_size=200),
    ),
    st.builds(Comment, **_viewer, text=st.text(max_size=500)),
    st.builds(CartAdded, **_viewer, sku=ids, qty=qtys),
    st.builds(OrderPlaced, **_viewer, order_id=ids, items=order_items),
    st.builds(StockSet, **_common, sku=ids, qty=st.integers(0, 10_000_000), price=prices),
)

_junk_values = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
# Junk dicts can never be valid: `ts` is always a string (and `type` may be anything).
junk_dicts = st.builds(
    lambda d, t: {**d, "ts": "not-ms", **({} if t is None else {"type": t})},
    st.dictionaries(st.text(max_size=10), _junk_values, max_size=6),
    st.none() | st.sampled_from(["viewer.left", "cart.added", "order.placed", "nope"]),
)
junk = junk_dicts | st.integers() | st.text(max_size=20)
items_strategy = st.lists(st.tuples(st.booleans(), valid_events | junk), max_size=20)


def _expected(items: list[tuple[bool, Any]]) -> tuple[list[tuple[int, Event]], list[int]]:
    good: list[tuple[int, Event]] = []
    bad: list[int] = []
    for i, (_, item) in enumerate(items):
        if isinstance(item, Event):
            good.append((i, item))
        else:
            bad.append(i)
    return good, bad


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items_strategy)
def test_property_array_keeps_exactly_the_valid_events(items: list[tuple[bool, Any]]) -> None:
    parts = [encode(item) for _, item in items]
    decoded = decode_events(envelope(parts))
    good, bad = _expected(items)
    assert decoded.events == good
    assert [r.index for r in decoded.rejected] == bad
    assert [r.raw for r in decoded.rejected] == [parts[i] for i in bad]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items_strategy.filter(bool))
def test_property_ndjson_keeps_exactly_the_valid_events(items: list[tuple[bool, Any]]) -> None:
    # The boolean adds a blank line after the item: blank lines are not items.
    body = b"".join(encode(item) + (b"\n\n" if blank else b"\n") for blank, item in items)
    decoded = decode_events(body)
    good, bad = _expected(items)
    assert decoded.events == good
    assert [r.index for r in decoded.rejected] == bad



def test_nesting_too_deep_is_a_body_error_naming_the_problem() -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 5_000 + b"]" * 5_000):
        with pytest.raises(BodyError, match=r"nests .* too deeply"):
            decode_events(body)


# --- the characters of ids: checked once per body, as msgspec's pattern would -----------

_STRICT_ID = msgspec.json.Decoder(Annotated[str, Meta(min_length=1, max_length=64,
                                                      pattern=ID_PATTERN)])


def _msgspec_takes(value: str) -> bool:
    try:
        _STRICT_ID.decode(msgspec.json.encode(value))
    except msgspec.ValidationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12) | st.text(_ID_CHARS + "\n\r{} é", min_size=1, max_size=12))
def test_an_id_is_refused_exactly_when_msgspec_s_pattern_would(value: str) -> None:
    """Ids are checked by codec, not by msgspec's per-field regex (models.IdChars); it must
    take and refuse the same strings, a newline inside one (the join's separator) too."""
    bad_order = ev("order.placed", event_id="x2", order_id="o-9",
                   items=[{"sku": "rice", "qty": 1, "price": 1.0},
                          {"sku": value, "qty": 1, "price": 1.0}])
    for item, field in ((ev("viewer.left", event_id="x1", viewer_id=value), "viewer_id"),
                        (bad_order, "items[1].sku")):
        for body in (envelope([GOOD_JOIN, item]), item):
            decoded = decode_events(body)
            taken = len(decoded.events) == (2 if body[:1] == b"[" else 1)
            if value == "rice" and field == "items[1].sku":
                continue  # a duplicate SKU: refused for that
            assert taken == _msgspec_takes(value), (value, field)
            if not taken:
                [rejection] = decoded.rejected
                assert f"- at `$.{field}`" in rejection.error, rejection.error


def _id_paths(schema: dict[str, Any], components: dict[str, Any]) -> list[str]:
    """The fields the JSON schema gives models.ID_PATTERN, items' fields as `items[0].f`."""
    def has_pattern(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("pattern") == ID_PATTERN or any(map(has_pattern, node.values()))
        return isinstance(node, list) and any(map(has_pattern, node))

    paths = []
    for name, prop in schema["properties"].items():
        if has_pattern(prop):
            paths.append(name)
        elif prop.get("type") == "array" and "$ref" in prop.get("items", {}):
            item = components[prop["items"]["$ref"].rsplit("/", 1)[1]]
            paths += [f"{name}[0].{sub}" for sub in _id_paths(item, components)]
    return paths


def test_every_id_field_of_every_event_is_checked() -> None:
    """From the schema, not from codec's own list: a new id field is checked or this fails.
    Each event type (one of each the simulator sends, and a cancel) with one id holding a
    brace, as would break a Redis hash tag: refused, naming that field."""
    plan = showplan.plan_for(room_id="r", viewers=300, duration_s=600, speed=20, seed=1)
    samples = {type(e): msgspec.to_builtins(e) for _, e in showplan.broadcast(plan)}
    samples[OrderCancelled] = {"type": "order.cancelled", **_VIEWER, "order_id": "o-1"}
    assert set(samples) == set(EVENT_TYPES.values())
    _, components = msgspec.json.schema_components(list(EVENT_TYPES.values()))
    checked = 0
    for cls, sample in samples.items():
        for path in _id_paths(components[cls.__name__], components):
            event = msgspec.json.decode(msgspec.json.encode(sample))
            if "[0]." in path:
                field, sub = path.split("[0].")
                event[field][0][sub] = "a}b"
            else:
                event[path] = "a}b"
            decoded = decode_events(msgspec.json.encode(event))
            assert decoded.events == [], (cls.__name__, path)
            assert f"matching regex {ID_PATTERN!r} - at `$.{path}`" in decoded.rejected[0].error
            checked += 1
    assert checked >= 3 * len(samples)  # event_id, room_id and at least one more each
