"""How the worker cuts a take into the pieces its pipeline handles (pure)."""

from __future__ import annotations

from stream.core.batch import Record
from stream.worker.app import CHUNK_BYTES, ORDER_PIECE_BYTES, _pieces

VIEWS, ORDERS = "viewer-events", "order-events"


def rec(topic: str, partition: int, offset: int, size: int) -> Record:
    return Record(topic, partition, offset, b"x" * size)


def where(pieces: list[list[Record]]) -> list[list[tuple[str, int, int]]]:
    return [[(r.topic, r.partition, r.offset) for r in piece] for piece in pieces]


def test_a_takes_orders_go_in_one_piece_first_whatever_lies_between_them() -> None:
    """A backlog's take: partition 0's orders, a megabyte of views, partition 1's orders.
    In record order they were two calls of the inventory, one per partition, so the
    partition read first took the stock whatever its orders' times."""
    take = [rec(ORDERS, 0, 0, 1_000), rec(ORDERS, 0, 1, 1_000),
            *[rec(VIEWS, 0, i, CHUNK_BYTES // 2) for i in range(8)],
            rec(ORDERS, 1, 0, 1_000)]
    pieces = where(_pieces(take, orders_topic=ORDERS))
    assert pieces[0] == [(ORDERS, 0, 0), (ORDERS, 0, 1), (ORDERS, 1, 0)]
    assert [len(p) for p in pieces[1:]] == [2, 2, 2, 2]
    assert [r for p in pieces[1:] for r in p] == [(VIEWS, 0, i) for i in range(8)]


def test_orders_past_the_bound_go_on_in_order_and_nothing_is_lost() -> None:
    take = [rec(ORDERS, p, i, ORDER_PIECE_BYTES // 2) for i in range(3) for p in range(2)]
    pieces = where(_pieces(take, orders_topic=ORDERS))
    assert [len(p) for p in pieces] == [2, 2, 2]
    assert [r for p in pieces for r in p] == [(ORDERS, p, i) for i in range(3) for p in range(2)]


def test_no_orders_no_empty_piece() -> None:
    assert where(_pieces([rec(VIEWS, 0, 0, 10)], orders_topic=ORDERS)) == [[(VIEWS, 0, 0)]]
    assert _pieces([], orders_topic=ORDERS) == []
