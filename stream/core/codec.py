"""Bytes <-> events at the boundary: strict decoding with per-item errors.

One body or Kafka record may hold one event, a JSON array of events (an envelope)
or NDJSON. Valid items are kept even when their neighbours are bad, so a single
broken event never costs the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from stream.core.models import AnyEvent, Event

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
            out.events = list(enumerate(events))
            return out
        try:
            items = _raw_list.decode(body)
        except msgspec.DecodeError as exc:
            raise BodyError(f"body is not valid JSON: {exc}") from None
    else:
        if body[:1] == b"{":
            # One object, perhaps pretty-printed over many lines; NDJSON fails this parse.
            try:
                out.events.append((0, _one.decode(body)))
                return out
            except msgspec.ValidationError as exc:
                if _is_one_value(body):  # else NDJSON whose first line is bad
                    out.rejected.append(Rejection(0, str(exc), body))
                    return out
            except msgspec.DecodeError:
                pass
        items = [msgspec.Raw(line) for line in body.split(b"\n") if line.strip()]
    malformed = 0
    for index, raw in enumerate(items):
        try:
            out.events.append((index, _one.decode(raw)))
        except msgspec.ValidationError as exc:
            out.rejected.append(Rejection(index, str(exc), bytes(raw)))
        except msgspec.DecodeError as exc:
            malformed += 1
            out.rejected.append(Rejection(index, str(exc), bytes(raw)))
    if malformed == len(items):
        raise BodyError("body is not valid JSON: no line of it parses as a JSON value")
    return out


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
