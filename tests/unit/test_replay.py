"""The backtest's pure parts: the stock model, choosing a broadcast, the replay, the command."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.core.models import AnyEvent, Event
from stream.engine.replay import broadcasts, outcomes, replay, select
from stream.engine.rules import load_dir
from stream.engine.stock import PLENTY, StockBook
from stream.engine.stockmodel import StockModel

SHIPPED = Path(__file__).resolve().parents[2] / "rules"
S, MIN = 1000, 60_000
T0 = 1_767_268_800_000
_n = 0


def ev(type_: str, at: int, **fields: Any) -> Event:
    global _n
    _n += 1
    raw = {"type": type_, "event_id": f"e{_n}", "room_id": "r1", "ts": T0 + at, **fields}
    return msgspec.convert(raw, AnyEvent)  # type: ignore[return-value]


def order(at: int, order_id: str, viewer: str, sku: str, qty: int) -> Event:
    return ev("order.placed", at, viewer_id=viewer, order_id=order_id,
              items=[{"sku": sku, "qty": qty, "price": 59.9}])


# --- the stock model --------------------------------------------------------------------

def test_stock_model_follows_the_inventory_rules() -> None:
    m = StockModel()

    def levels(event: Event) -> list[tuple[str, int, int]]:
        return [(sku, ts, available) for sku, ts, available, _ in m.apply(event)]

    assert levels(ev("stock.set", 0, sku="rice", qty=3)) == [("rice", T0, 3)]
    assert levels(order(1, "o1", "a", "rice", 2)) == [("rice", T0 + 1, 1)]
    assert levels(order(2, "o2", "b", "rice", 2)) == []  # only 1 left: all or nothing
    assert levels(order(3, "o3", "c", "rice", 11)) == []  # over the line limit
    assert levels(order(4, "o4", "d", "oil", 1)) == []  # never loaded
    assert levels(order(5, "o1", "a", "rice", 2)) == []  # a repeat changes nothing
    assert levels(ev("order.cancelled", 6, viewer_id="a", order_id="o1")) == [
        ("rice", T0 + 6, 3)]
    levels(order(7, "o5", "e", "rice", 3))
    assert m.available["rice"] == 0
    # Unpaid for 15 minutes: released at its deadline, before the next event applies.
    assert levels(ev("viewer.heartbeat", 20 * MIN, viewer_id="e")) == [
        ("rice", T0 + 7 + 15 * MIN, 3)]
    # A late payment is re-reserved while the stock is there.
    assert levels(ev("order.paid", 21 * MIN, viewer_id="e", order_id="o5")) == [
        ("rice", T0 + 21 * MIN, 0)]
    assert levels(ev("order.paid", 22 * MIN, viewer_id="e", order_id="o5")) == []


def test_stock_book_answers_with_the_newest_change_at_or_before_a_time() -> None:
    """Orders are applied in processing order: a partition read late brings an order of
    ts 550 after those of 600 and 1000, and its level (the lowest) holds them all."""
    book = StockBook()
    book.observe("r1", "rice", 600, 5, 1)
    book.observe("r1", "rice", 1000, 3, 2)
    book.observe("r1", "rice", 550, 0, 3)
    assert book.available_at("r1", "rice", 500) is None  # nothing known yet
    assert book.available_at("r1", "rice", 560) == 0
    assert book.available_at("r1", "rice", 800) == 0  # v3, not v1's 5
    book.observe("r1", "rice", 900, 40, 4)  # a restock
    assert book.available_at("r1", "rice", 950) == 40
    assert book.available_at("r1", "oil", 950) is None


def test_stock_book_keeps_a_run_of_plenty_as_one_point() -> None:
    book = StockBook()
    for i in range(1000):  # a hot SKU's thousands of changes above PLENTY
        book.observe("r1", "rice", i, PLENTY + 1000 - i, i + 1)
    book.observe("r1", "rice", 1000, PLENTY, 1001)
    levels = book._levels["r1", "rice"]
    assert len(levels.points) == 2
    assert book.available_at("r1", "rice", 500) > PLENTY
    assert book.available_at("r1", "rice", 1000) == PLENTY


# --- choosing a broadcast ---------------------------------------------------------------

def two_shows() -> list[Event]:
    day = 24 * 60 * MIN
    return [ev("stock.set", -MIN, sku="rice", qty=100),
            ev("broadcast.started", 0), ev("viewer.joined", 1, viewer_id="a", source="x"),
            order(2, "o1", "a", "rice", 5), ev("broadcast.ended", 10 * MIN),
            ev("viewer.joined", day - MIN, viewer_id="b", source="x"),  # warm-up
            ev("broadcast.started", day), ev("broadcast.ended", day + 10 * MIN)]


def test_select_takes_the_latest_broadcast_or_the_one_named() -> None:
    events = two_shows()
    first, second = broadcasts(events, room_id="r1")
    assert first.broadcast_id == f"r1@{T0}" and first.ended_at == T0 + 10 * MIN
    chosen, mine, since = select(events, room_id="r1")
    assert chosen == second and since == first.ended_at
    assert len(mine) == len(events)  # the earlier show stays in for the stock it moved
    chosen, mine, since = select(events, room_id="r1", broadcast=first.broadcast_id)
    assert chosen == first and since is None
    assert mine == events[:6]  # up to the next start: what came after the end too
    with pytest.raises(ValueError, match=r"broadcast: 'r1@1' not in the log .*known: r1@"):
        select(events, room_id="r1", broadcast="r1@1")


# --- the replay -------------------------------------------------------------------------

def sold_out_show() -> list[Event]:
    """Stock of 2; six viewers open the rice card; two units sell a minute in: every dwell
    popup due at 3 minutes is for a sold-out product (the issue's 还剩 0 件)."""
    events = [ev("stock.set", -MIN, sku="rice", qty=2, name="有机胚芽米", price=59.9),
              ev("broadcast.started", 0)]
    for i in range(6):
        events += [ev("viewer.joined", S, viewer_id=f"v{i}", source="douyin"),
                   ev("product.viewed", 2 * S, viewer_id=f"v{i}", sku="rice")]
        # The app's heartbeats: without them the presence timeout (60 s) has them leave.
        events += [ev("viewer.heartbeat", k * 30 * S, viewer_id=f"v{i}") for k in range(1, 8)]
    events += [order(MIN, "o1", "buyer", "rice", 2), ev("broadcast.ended", 10 * MIN)]
    return events


def test_replay_suppresses_the_sold_out_product_and_a_changed_rule_sends_it() -> None:
    rules = load_dir(SHIPPED)
    got = {o.rule_id: o for o in outcomes(replay(sold_out_show(), room_id="r1", rules=rules),
                                          rules=rules)}
    dwell = got["dwell-3min"]
    assert (dwell.sent, dwell.held_out) == (0, 0)
    assert dwell.suppressed == {"sold_out": 6}
    # The candidate: the same rule with sold_out = false sends (or holds out) all six.
    changed = msgspec.structs.replace(rules, nudges=tuple(
        msgspec.structs.replace(r, exit=msgspec.structs.replace(r.exit, sold_out=False))
        for r in rules.nudges))
    again = {o.rule_id: o for o in outcomes(replay(sold_out_show(), room_id="r1",
                                                   rules=changed))}
    assert again["dwell-3min"].sent + again["dwell-3min"].held_out == 6
    assert again["dwell-3min"].suppressed.get("sold_out") is None


def test_replay_decides_the_same_whatever_the_input_order_and_repeats() -> None:
    rules = load_dir(SHIPPED)
    events = sold_out_show()
    shuffled = events[::-1] + events[:3]  # reversed, and three delivered twice
    def effects(given: list[Event]) -> list[bytes]:
        return sorted(map(msgspec.json.encode, replay(given, room_id="r1", rules=rules)))

    assert effects(shuffled) == effects(events)


def test_backtest_command_on_a_file(tmp_path: Path) -> None:
    events = tmp_path / "show.ndjson"
    events.write_bytes(b"\n".join(msgspec.json.encode(e) for e in sold_out_show()))
    candidate = tmp_path / "candidate"
    shutil.copytree(SHIPPED, candidate)
    nudges = candidate / "nudges.toml"
    nudges.write_text(nudges.read_text().replace("broadcast_ended = true\n",
                                                 "broadcast_ended = true\nsold_out = false\n",
                                                 1))
    env = {"LIVECOMMERCE_RULES_DIR": str(SHIPPED)}
    args = ["rules", "backtest", "--room", "r1", "--events", str(events)]
    done = CliRunner().invoke(main, [*args, "--rules", str(candidate), "--json"], env=env)
    assert done.exit_code == 0, done.output
    report = orjson.loads(done.output)
    assert report["broadcast"]["broadcast_id"] == f"r1@{T0}"
    run = {r["rule_id"]: r for r in report["running"]["rules"]}
    cand = {r["rule_id"]: r for r in report["candidate"]["rules"]}
    assert run["dwell-3min"]["suppressed"] == {"sold_out": 6}
    assert cand["dwell-3min"]["sent"] + cand["dwell-3min"]["held_out"] == 6
    text = CliRunner().invoke(main, [*args, "--rules", str(candidate)], env=env)
    assert text.exit_code == 0 and "sold_out 6" in text.output, text.output
    bad = CliRunner().invoke(main, [*args, "--broadcast", "r1@5"], env=env)
    assert bad.exit_code == 1 and "broadcast: 'r1@5'" in bad.output
