"""Pick lists from orders (pure): only paid orders are picked, the rest counted apart."""

from __future__ import annotations

import csv
import io

from stream.hostview.picklist import (
    BOM,
    DIRECT,
    CustomerPick,
    LeaderPick,
    Profile,
    SkuPick,
    build,
    picklist_csv,
    safe_cell,
)
from stream.store.orderbook import Line, Order, decode_lines


def order(oid: str, viewer: str, status: str, *lines: tuple[str, int, float],
          reason: str = "") -> Order:
    return Order(order_id=oid, viewer_id=viewer, status=status, reason=reason,
                 lines=tuple(Line(sku=s, qty=q, price=p) for s, q, p in lines),
                 amount=sum(q * p for _, q, p in lines))


ORDERS = [
    order("o1", "v1", "confirmed", ("rice", 2, 59.9), ("oil", 1, 89.9)),
    order("o2", "v2", "confirmed", ("rice", 1, 59.9)),
    order("o3", "v3", "confirmed", ("oil", 3, 89.9)),
    order("o4", "v1", "confirmed", ("rice", 1, 59.9)),
    order("o5", "v4", "reserved", ("rice", 5, 59.9)),
    order("o6", "v4", "released", ("rice", 5, 59.9), reason="cancelled"),
    order("o7", "v5", "released", ("oil", 1, 89.9), reason="payment_failed"),
    order("o8", "v5", "released", ("oil", 1, 89.9), reason="expired"),
    order("o9", "v6", "rejected", ("oil", 9, 89.9), reason="sold_out"),
]
PROFILES = {"v1": Profile(leader="leader-wang", region="杭州"),
            "v2": Profile(leader="leader-wang", region="杭州"),
            "v3": Profile(region="成都")}  # v3 came through no leader


def test_only_paid_orders_are_picked_and_the_rest_counted_apart() -> None:
    pick = build(ORDERS, PROFILES, by="sku", room_id="r", broadcast_id="b",
                 names={"rice": "有机胚芽米 5kg"})
    assert pick.excluded == {"unpaid": 1, "cancelled": 1, "payment_failed": 1, "expired": 1,
                             "rejected": 1}
    assert pick.rows == [SkuPick(sku="oil", name="oil", units=4, amount=359.6, orders=2),
                         SkuPick(sku="rice", name="有机胚芽米 5kg", units=4, amount=239.6,
                                 orders=3)]
    assert (pick.paid_orders, pick.units, pick.amount, pick.buyers) == (4, 8, 599.2, 3)


def test_by_leader_puts_buyers_without_one_in_the_direct_row_last() -> None:
    pick = build(ORDERS, PROFILES, by="leader", room_id="r", broadcast_id="b")
    assert pick.rows == [
        LeaderPick(leader="leader-wang", region="杭州", units={"oil": 1, "rice": 4},
                   buyers=2, orders=3, amount=329.5),
        LeaderPick(leader=DIRECT, region="成都", units={"oil": 3}, buyers=1, orders=1,
                   amount=269.7)]


def test_by_customer_sums_a_buyers_orders_per_sku() -> None:
    pick = build(ORDERS, PROFILES, by="customer", room_id="r", broadcast_id="b")
    first = pick.rows[0]
    assert isinstance(first, CustomerPick)
    assert (first.viewer_id, first.leader, first.region, first.orders) == (
        "v1", "leader-wang", "杭州", 2)
    assert [(line.sku, line.qty) for line in first.lines] == [("oil", 1), ("rice", 3)]
    assert [r.viewer_id for r in pick.rows if isinstance(r, CustomerPick)] == ["v1", "v2", "v3"]


def test_the_csv_has_a_bom_a_header_and_parses_back_to_the_rows() -> None:
    pick = build(ORDERS, PROFILES, by="leader", room_id="r", broadcast_id="b")
    text = picklist_csv(pick)
    assert text.startswith(BOM)
    rows = list(csv.DictReader(io.StringIO(text.removeprefix(BOM))))
    assert rows == [{"leader": "leader-wang", "region": "杭州", "buyers": "2", "orders": "3",
                     "amount": "329.50", "oil": "1", "rice": "4"},
                    {"leader": DIRECT, "region": "成都", "buyers": "1", "orders": "1",
                     "amount": "269.70", "oil": "3", "rice": "0"}]


def test_a_line_without_its_price_is_valued_at_the_skus() -> None:
    lines = decode_lines("rice 2;oil 1", "rice 59.9")
    assert lines == (Line(sku="rice", qty=2, price=59.9), Line(sku="oil", qty=1, price=None))
    paid = Order(order_id="o", viewer_id="v", status="confirmed", reason="", lines=lines,
                 amount=0)
    pick = build([paid], {}, by="sku", room_id="r", broadcast_id=None, prices={"oil": 10.0})
    assert [(r.sku, r.amount) for r in pick.rows if isinstance(r, SkuPick)] == [
        ("oil", 10.0), ("rice", 119.8)]


def test_no_csv_cell_is_a_formula_a_spreadsheet_would_run() -> None:
    """A region comes from the viewer's own app (viewer.joined), a name from the stock
    feed: either may be `=HYPERLINK(...)`, which Excel runs unless the cell is quoted."""
    orders = [order("o1", "v1", "confirmed", ("rice", 2, 59.9))]
    profiles = {"v1": Profile(leader="-leader", region="=HYPERLINK(\"http://x\",\"杭州\")")}
    names = {"rice": "@SUM(A1)"}
    by_customer = build(orders, profiles, by="customer", room_id="r", broadcast_id=None,
                        names=names)
    [row] = list(csv.DictReader(io.StringIO(picklist_csv(by_customer).removeprefix(BOM))))
    assert (row["leader"], row["region"], row["name"]) == (
        "'-leader", "'=HYPERLINK(\"http://x\",\"杭州\")", "'@SUM(A1)")
    assert (row["viewer_id"], row["qty"], row["amount"]) == ("v1", "2", "119.80")
    assert [safe_cell(c) for c in ("-1.5", "+3", "plain", "\tx", "")] == [
        "-1.5", "+3", "plain", "'\tx", ""]
