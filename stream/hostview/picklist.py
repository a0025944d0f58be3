"""Pick lists after the show (智能分拣): what to prepare per product, per pickup point
(团长 自提) and per buyer, from a broadcast's paid orders. Pure: the orders and the
viewers' profiles come in (read by `hostview.afterreads`), lists and CSV go out.

Only confirmed (paid) orders are picked. The others are counted apart by why they are
not: `unpaid` (still reserved), `cancelled`, `payment_failed`, `expired` (released) and
`rejected` (sold out, unknown SKU, over the limit), so the store sees what it is not
packing. Per SKU the units equal the stock's `sold` booked by that broadcast's orders.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from stream.store.orderbook import Order

By = Literal["sku", "leader", "customer"]
VIEWS: tuple[By, ...] = ("sku", "leader", "customer")
DIRECT = "direct"  # the pickup row of buyers who came through no leader
EXCLUDED = ("unpaid", "cancelled", "payment_failed", "expired", "rejected")
# Spreadsheets (Excel above all) read a CSV as UTF-8 only when it starts with a BOM;
# without it Chinese product names and regions show as mojibake.
BOM = "\ufeff"


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """What the pick lists need of a viewer: their leader (团长) and region, or ''."""

    leader: str = ""
    region: str = ""


class SkuPick(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    units: int
    amount: float
    orders: int


class LeaderPick(msgspec.Struct, frozen=True, kw_only=True):
    """One pickup point: what its buyers collect there."""

    leader: str  # DIRECT for buyers with no leader
    region: str  # the region most of its buyers are in ('' if none known)
    units: dict[str, int]  # sku -> units
    buyers: int
    orders: int
    amount: float


class CustomerLine(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    qty: int
    amount: float


class CustomerPick(msgspec.Struct, frozen=True, kw_only=True):
    viewer_id: str
    leader: str  # DIRECT for a buyer with no leader
    region: str
    lines: list[CustomerLine]  # one per SKU, the buyer's paid orders summed
    orders: int
    amount: float


class PickList(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`GET /v1/rooms/{room}/picklist`: one view of a broadcast's paid orders; its rows
    are in the list named for the view (`skus`, `leaders` or `customers`), the others
    left out (one list type per field: a JSON schema and decoder can name each)."""

    room_id: str
    broadcast_id: str | None
    by: By
    paid_orders: int
    units: int
    amount: float
    buyers: int
    excluded: dict[str, int]  # orders not picked, by EXCLUDED reason
    skus: list[SkuPick] = []
    leaders: list[LeaderPick] = []
    customers: list[CustomerPick] = []

    @property
    def rows(self) -> list[SkuPick] | list[LeaderPick] | list[CustomerPick]:
        """The view's rows."""
        if self.by == "sku":
            return self.skus
        return self.leaders if self.by == "leader" else self.customers


def excluded_reason(order: Order) -> str | None:
    """Why an order is not picked (one of EXCLUDED), or None for a paid one."""
    if order.status == "confirmed":
        return None
    if order.status == "reserved":
        return "unpaid"
    if order.status == "released" and order.reason in ("cancelled", "payment_failed"):
        return order.reason
    if order.status == "released":
        return "expired"
    return "rejected"


def _line_amount(qty: int, price: float | None, sku: str, prices: Mapping[str, float]) -> float:
    return qty * (price if price is not None else prices.get(sku, 0.0))


def build(orders: Iterable[Order], profiles: Mapping[str, Profile], *, by: By,
          room_id: str, broadcast_id: str | None, names: Mapping[str, str] | None = None,
          prices: Mapping[str, float] | None = None) -> PickList:
    """The pick list `by` sku, leader or customer. `names` and `prices` are the SKUs'
    (a line kept without its price is valued at the SKU's price)."""
    names, prices = names or {}, prices or {}
    excluded = dict.fromkeys(EXCLUDED, 0)
    paid: list[Order] = []
    for order in orders:
        why = excluded_reason(order)
        if why is None:
            paid.append(order)
        else:
            excluded[why] += 1
    views: dict[str, Any] = {}
    if by == "sku":
        views["skus"] = _by_sku(paid, names, prices)
    elif by == "leader":
        views["leaders"] = _by_leader(paid, profiles, prices)
    else:
        views["customers"] = _by_customer(paid, profiles, names, prices)
    amount = sum(_line_amount(line.qty, line.price, line.sku, prices)
                 for order in paid for line in order.lines)
    return PickList(room_id=room_id, broadcast_id=broadcast_id, by=by, paid_orders=len(paid),
                    units=sum(line.qty for order in paid for line in order.lines),
                    amount=round(amount, 2), buyers=len({o.viewer_id for o in paid}),
                    excluded=excluded, **views)


def _by_sku(paid: list[Order], names: Mapping[str, str],
            prices: Mapping[str, float]) -> list[SkuPick]:
    units: Counter[str] = Counter()
    amount: dict[str, float] = {}
    orders: Counter[str] = Counter()
    for order in paid:
        for line in order.lines:
            units[line.sku] += line.qty
            amount[line.sku] = amount.get(line.sku, 0.0) + _line_amount(
                line.qty, line.price, line.sku, prices)
        orders.update({line.sku for line in order.lines})
    return [SkuPick(sku=sku, name=names.get(sku, sku), units=units[sku],
                    amount=round(amount[sku], 2), orders=orders[sku]) for sku in sorted(units)]


def _leader(profiles: Mapping[str, Profile], viewer: str) -> Profile:
    p = profiles.get(viewer) or Profile()
    return p if p.leader else Profile(leader=DIRECT, region=p.region)


def _by_leader(paid: list[Order], profiles: Mapping[str, Profile],
               prices: Mapping[str, float]) -> list[LeaderPick]:
    groups: dict[str, list[Order]] = {}
    for order in paid:
        groups.setdefault(_leader(profiles, order.viewer_id).leader, []).append(order)
    out = []
    for leader, orders in groups.items():
        units: Counter[str] = Counter()
        for order in orders:
            for line in order.lines:
                units[line.sku] += line.qty
        buyers = {o.viewer_id for o in orders}
        regions = Counter(r for r in (_leader(profiles, b).region for b in buyers) if r)
        # The most common region, ties to the first by name: the same answer every read.
        region = min(regions, key=lambda r: (-regions[r], r)) if regions else ""
        out.append(LeaderPick(
            leader=leader, region=region, units=dict(sorted(units.items())),
            buyers=len(buyers), orders=len(orders),
            amount=round(sum(_line_amount(line.qty, line.price, line.sku, prices)
                             for o in orders for line in o.lines), 2)))
    # By pickup point, the direct buyers last: the order a driver's sheet is read in.
    return sorted(out, key=lambda g: (g.leader == DIRECT, g.leader))


def _by_customer(paid: list[Order], profiles: Mapping[str, Profile], names: Mapping[str, str],
                 prices: Mapping[str, float]) -> list[CustomerPick]:
    groups: dict[str, list[Order]] = {}
    for order in paid:
        groups.setdefault(order.viewer_id, []).append(order)
    out = []
    for viewer, orders in sorted(groups.items()):
        qty: Counter[str] = Counter()
        amount: dict[str, float] = {}
        for order in orders:
            for line in order.lines:
                qty[line.sku] += line.qty
                amount[line.sku] = amount.get(line.sku, 0.0) + _line_amount(
                    line.qty, line.price, line.sku, prices)
        who = _leader(profiles, viewer)
        lines = [CustomerLine(sku=sku, name=names.get(sku, sku), qty=qty[sku],
                              amount=round(amount[sku], 2)) for sku in sorted(qty)]
        out.append(CustomerPick(viewer_id=viewer, leader=who.leader, region=who.region,
                                lines=lines, orders=len(orders),
                                amount=round(sum(amount.values()), 2)))
    return out


# --- CSV ----------------------------------------------------------------------------------


def header(pick: PickList) -> list[str]:
    """The CSV's header row (the leader view has a units column per SKU picked)."""
    if pick.by == "sku":
        return ["sku", "name", "units", "amount", "orders"]
    if pick.by == "leader":
        return ["leader", "region", "buyers", "orders", "amount", *_skus(pick)]
    return ["viewer_id", "leader", "region", "sku", "name", "qty", "amount"]


def _skus(pick: PickList) -> list[str]:
    return sorted({sku for row in pick.rows if isinstance(row, LeaderPick) for sku in row.units})


def table(pick: PickList) -> list[list[str]]:
    """The CSV's rows after the header, as text (the customer view: one row per line)."""
    out: list[list[str]] = []
    skus = _skus(pick)
    for row in pick.rows:
        if isinstance(row, SkuPick):
            out.append([row.sku, row.name, str(row.units), _money(row.amount), str(row.orders)])
        elif isinstance(row, LeaderPick):
            out.append([row.leader, row.region, str(row.buyers), str(row.orders),
                        _money(row.amount), *(str(row.units.get(s, 0)) for s in skus)])
        else:
            out += [[row.viewer_id, row.leader, row.region, line.sku, line.name,
                     str(line.qty), _money(line.amount)] for line in row.lines]
    return out


def _money(x: float) -> str:
    return f"{x:.2f}"


# A cell a spreadsheet would run as a formula (OWASP's CSV injection list). Product names
# and regions are free text (a viewer's app sends its own region on viewer.joined), so
# `=HYPERLINK(...)` as a region would run in the store's Excel.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(cell: str) -> str:
    """`cell`, with a leading `'` when a spreadsheet would read it as a formula (a number,
    negative or not, stays as it is)."""
    if not cell.startswith(_FORMULA_START):
        return cell
    try:
        float(cell)
    except ValueError:
        return "'" + cell
    return cell


def to_csv(headers: list[str], rows: Iterable[list[str]]) -> str:
    """CSV text a spreadsheet opens cleanly: a UTF-8 BOM, a header row, CRLF lines, and
    no cell it would run as a formula (`safe_cell`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([safe_cell(h) for h in headers])
    writer.writerows([safe_cell(c) for c in row] for row in rows)
    return BOM + buffer.getvalue()


def picklist_csv(pick: PickList) -> str:
    return to_csv(header(pick), table(pick))
