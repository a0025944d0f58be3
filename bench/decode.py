"""Decoding the viewer benchmark's envelopes (500 events each), three ways in one run:
what the boundary's id check costs, and what it replaced.

    .venv/bin/python bench/decode.py [--viewers 2000] [--seconds 2] [--json PATH]

Over the same envelopes of the simulator's show, alternating, `--seconds` a round, 3
rounds (the median round is printed):
- `bare`: msgspec's decoder of the event union with every check but the characters of
  ids (the floor);
- `boundary`: `codec.decode_events`, which adds those characters, once per body;
- `patterned`: msgspec with `Meta(pattern=ID_PATTERN)` on every id field, the models as
  they were before session 14 (built here from today's, field for field).
`ratio` is boundary over patterned (the speed-up), `floor_ratio` boundary over bare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from stream.core.codec import decode_events, encode
from stream.core.models import EVENT_TYPES, ID_PATTERN, AnyEvent, Event, IdChars
from stream.local import showplan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit

ENVELOPE = 500
_bare = msgspec.json.Decoder(list[AnyEvent])


def _patterned_type(hint: Any, twins: dict[type, Any]) -> Any:
    """`hint` with each id (models.IdChars) checked by msgspec's pattern, as before."""
    if typing.get_origin(hint) is typing.Annotated:
        inner, *meta = typing.get_args(hint)
        if any(isinstance(m, IdChars) for m in meta):
            [m] = [m for m in meta if isinstance(m, Meta)]
            return Annotated[inner, Meta(min_length=m.min_length, max_length=m.max_length,
                                         pattern=ID_PATTERN)]
        return Annotated[(_patterned_type(inner, twins), *meta)]  # type: ignore[misc]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_patterned_type(a, twins) for a in args)]  # noqa: UP007
    if origin is list:
        return list[_patterned_type(args[0], twins)]  # type: ignore[misc]
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return _twin(hint, twins)
    return hint


def _twin(cls: type[msgspec.Struct], twins: dict[type, Any]) -> Any:
    if cls not in twins:
        config = cls.__struct_config__
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = [(f.name, _patterned_type(hints[f.name], twins),
                   f.default if f.default is not msgspec.NODEFAULT else msgspec.NODEFAULT)
                  for f in msgspec.structs.fields(cls)]
        twins[cls] = msgspec.defstruct(
            cls.__name__, [(n, t) if d is msgspec.NODEFAULT else (n, t, d)
                           for n, t, d in fields],
            tag=config.tag, tag_field=config.tag_field, kw_only=True, frozen=True,
            forbid_unknown_fields=True)
    return twins[cls]


_twins: dict[type, Any] = {}
_patterned = msgspec.json.Decoder(
    list[typing.Union[tuple(_twin(c, _twins) for c in EVENT_TYPES.values())]])  # noqa: UP007


def bodies(viewers: int) -> list[bytes]:
    plan = showplan.plan_for(room_id="bench", viewers=viewers, duration_s=600, speed=1000,
                             seed=7)
    events: list[Event] = [e for _, e in showplan.broadcast(plan)]
    return [encode(events[i:i + ENVELOPE]) for i in range(0, len(events), ENVELOPE)]


def rate(decode: Callable[[bytes], object], data: list[bytes], n_events: int,
         seconds: float) -> float:
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        for body in data:
            decode(body)
        done += n_events
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = bodies(args.viewers)
    n_events = sum(len(_bare.decode(b)) for b in data)
    assert sum(len(decode_events(b).events) for b in data) == n_events  # all valid
    # The twins check what the models checked: a brace in a viewer id is refused.
    bad = data[0].replace(b'"viewer_id":"', b'"viewer_id":"{', 1)
    try:
        _patterned.decode(bad)
        raise AssertionError("the patterned twins took an id with a brace")
    except msgspec.ValidationError:
        pass
    assert len(_patterned.decode(data[0])) == len(_bare.decode(data[0]))
    ways: dict[str, Callable[[bytes], object]] = {
        "bare": _bare.decode, "boundary": decode_events, "patterned": _patterned.decode}
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(3):
        for name, decode in ways.items():
            rounds[name].append(rate(decode, data, n_events, args.seconds))
    median = {name: statistics.median(r) for name, r in rounds.items()}
    for name, r in rounds.items():
        print(f"{name}: {median[name]:,.0f} events/s (rounds {', '.join(f'{x:,.0f}' for x in r)})")
    emit({"bench": "decode", "events": n_events, "envelope": ENVELOPE,
          **{f"{name}_events_per_s": round(m) for name, m in median.items()},
          "ratio": round(median["boundary"] / median["patterned"], 3),
          "floor_ratio": round(median["boundary"] / median["bare"], 3)}, args.json)


if __name__ == "__main__":
    main()
