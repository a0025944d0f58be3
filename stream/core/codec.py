"""Bytes <-> events at the boundary: strict decoding with per-item errors.

One body or Kafka record may hold one event, a JSON array of events (an envelope)
or NDJSON. Valid items are kept even when their neighbours are bad, so a single
broken event never costs the rest of its batch.
"""

from __future__ import annotations

import re
import string
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec

from stream.core.models import EVENT_TYPES, ID_PATTERN, AnyEvent, Event, IdChars

_encoder = msgspec.json.Encoder()
encode = _encoder.encode

_one = msgspec.json.Decoder(AnyEvent)
_many = msgspec.json.Decoder(list[AnyEvent])
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_raw_one = msgspec.json.Decoder(msgspec.Raw)


class BodyError(ValueError):
    """The payload as a whole is not JSON (nor NDJSON): nothing in it can be trusted."""


@dataclass(slots=True)
class Rejection:
    index: int
    error: str
    raw: bytes


@dataclass(slots=True)
class Decoded:
    events: list[tuple[int, Event]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


# No event nests deeper than 4 (envelope array > event > items > item); msgspec stops at
# Python's recursion limit (~1,000 levels) with a RecursionError, which must not escape.
NESTING_ERROR = ("body nests arrays or objects too deeply (past ~1,000 levels; an event "
                 "nests at most 4) - at `$`")


def decode_events(data: bytes) -> Decoded:
    """Decode one event, an array of events, or NDJSON into events and rejections.

    Raises BodyError when `data` is not JSON at all (an array that does not parse,
    or a payload with no JSON value in it), or nests too deeply to decode.
    """
    try:
        return _decode_events(data)
    except RecursionError:
        raise BodyError(NESTING_ERROR) from None


def _decode_events(data: bytes) -> Decoded:
    body = data.strip()
    if not body:
        raise BodyError("empty body: expected a JSON array of events or NDJSON")
    out = Decoded()
    if body[:1] == b"[":
        try:
            events = _many.decode(body)
        except msgspec.ValidationError:
            pass  # some item is bad; sort them out one by one below
        except msgspec.DecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
        else:
            if _ids_ok(events):
                out.events = list(enumerate(events))
                return out
            # Some id has a character it may not: sort them out one by one below.
        try:
            items = _raw_list.decode(body)
        except msgspec.DecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
    else:
        if body[:1] == b"{":
            # One object, perhaps pretty-printed over many lines; NDJSON fails this parse.
            try:
                event = _one.decode(body)
            except msgspec.ValidationError as exc:
                if _is_one_value(body):  # else NDJSON whose first line is bad
                    out.rejected.append(Rejection(0, str(exc), body))
                    return out
            except msgspec.DecodeError:
                pass
            else:
                _keep(out, 0, event, body)
                return out
        items = [msgspec.Raw(line) for line in body.split(b"\n") if line.strip()]
    malformed = 0
    for index, raw in enumerate(items):
        try:
            _keep(out, index, _one.decode(raw), raw)
        except msgspec.ValidationError as exc:
            out.rejected.append(Rejection(index, str(exc), bytes(raw)))
        except msgspec.DecodeError as exc:
            malformed += 1
            out.rejected.append(Rejection(index, str(exc), bytes(raw)))
    if malformed == len(items):
        raise BodyError("body is not valid JSON: no line of it parses as a JSON value")
    return out


def _keep(out: Decoded, index: int, event: Event, raw: bytes | msgspec.Raw) -> None:
    error = None if _ids_ok([event]) else _id_error(event)
    if error is None:
        out.events.append((index, event))
    else:
        out.rejected.append(Rejection(index, error, bytes(raw)))


# --- the characters of ids (models.IdChars), once per body ------------------------------

def _marked(hint: Any) -> bool:
    """Whether a field's type is an id (models.Id, models.EventId), or one or None."""
    if typing.get_origin(hint) is typing.Annotated:
        return any(isinstance(m, IdChars) for m in hint.__metadata__)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_marked(arg) for arg in typing.get_args(hint))
    return False


def _id_fields(cls: type) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """A Struct's id fields, and its fields that are lists of Structs with id fields (an
    order's items) with theirs."""
    direct: list[str] = []
    nested: list[tuple[str, list[str]]] = []
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if _marked(hint):
            direct.append(name)
            continue
        inner = hint.__origin__ if typing.get_origin(hint) is typing.Annotated else hint
        if typing.get_origin(inner) is list:
            (item,) = typing.get_args(inner)
            if isinstance(item, type) and issubclass(item, msgspec.Struct):
                subs, _ = _id_fields(item)
                if subs:
                    nested.append((name, subs))
    return direct, nested


_ID_FIELDS = {cls: _id_fields(cls) for cls in EVENT_TYPES.values()}
# Every event has an event_id and a room_id, so attrgetter always returns a tuple.
_GET: dict[type, Callable[[Event], tuple[str | None, ...]]] = {
    cls: attrgetter(*direct) for cls, (direct, _) in _ID_FIELDS.items()}
_NESTED = {cls: nested for cls, (_, nested) in _ID_FIELDS.items() if nested}
_ID = re.compile(ID_PATTERN)
# Ids joined by a newline, which no id may hold: what is left of the body's ids once
# these bytes are deleted must be nothing (6x faster than a regex over the same string).
_ID_BYTES = (string.ascii_letters + string.digits + "._:@-\n").encode()


def _ids_ok(events: Sequence[Event]) -> bool:
    # One comprehension for the fields of every event, then the few with items: 0.50 us
    # an event of the simulator's show, 0.83 in one loop that did both (bench/decode.py).
    get = _GET
    values: list[str | None] = list(chain.from_iterable([get[type(e)](e) for e in events]))
    for event in [e for e in events if type(e) in _NESTED]:
        for name, subs in _NESTED[type(event)]:
            for item in getattr(event, name):
                values.extend(getattr(item, sub) for sub in subs)
    present = len(values) - values.count(None)
    joined = "\n".join(filter(None, values))
    return present == 0 or (joined.count("\n") == present - 1
                            and not joined.encode().translate(None, _ID_BYTES))


def _id_error(event: Event) -> str | None:
    """msgspec's message for the first id of `event` with a character it may not have."""
    direct, nested = _ID_FIELDS[type(event)]
    paths = [(name, getattr(event, name)) for name in direct]
    for name, subs in nested:
        paths += [(f"{name}[{i}].{sub}", getattr(item, sub))
                  for i, item in enumerate(getattr(event, name)) for sub in subs]
    for path, value in paths:
        if value is not None and _ID.search(value) is None:
            return f"Expected `str` matching regex {ID_PATTERN!r} - at `$.{path}`"
    return None


def _is_one_value(body: bytes) -> bool:
    try:
        _raw_one.decode(body)
    except msgspec.DecodeError:
        return False
    return True


def clock_error(event: Event, *, now_ms: int, max_future_ms: int) -> str | None:
    """A reason to refuse `event` for its timestamp, or None."""
    ahead = event.ts - now_ms
    if ahead > max_future_ms:
        return (f"ts: {event.ts} is {ahead / 1000:.0f} s in the future "
                f"(limit {max_future_ms / 1000:.0f} s) - at `$.ts`")
    return None


def envelope(parts: list[bytes]) -> bytes:
    """Join already-encoded events into one JSON array (one Kafka record)."""
    return b"[" + b",".join(parts) + b"]"
