"""The hold of a backlog's orders (stream/worker/orderhold.py): pure, no servers."""

from __future__ import annotations

from stream.core.batch import Part, Record
from stream.core.models import OrderPaid
from stream.worker.orderhold import HOLD_SLACK_MS, Held, drop, first_held, take

S = 1000


def part(partition: int, offset: int, ts: int) -> Part:
    paid = OrderPaid(event_id=f"e{partition}-{offset}", room_id="r", ts=1_600_000_000_000 + ts,
                     viewer_id="v", order_id=f"o{offset}")
    return Part(Record("lc.order-events", partition, offset, b""), [paid], frozenset({"r"}))


def offsets(parts: list[Part]) -> list[tuple[int, int]]:
    return sorted((p.record.partition, p.record.offset) for p in parts)  # per partition, in order


def test_orders_past_the_partitions_behind_wait_and_a_retry_adds_none_twice() -> None:
    first = [part(0, 0, 10 * S), part(1, 0, 11 * S), part(1, 1, 60 * S), part(1, 2, 61 * S)]
    now, held = take(Held(), first, behind=[0])
    assert offsets(now) == [(0, 0), (1, 0)]  # 11 s is within 2 s of partition 0's 10 s
    assert first_held(held) == {1: 1}
    # A retried call starts from the state before it (committed only once applied).
    again, held_again = take(Held(), first, behind=[0])
    assert offsets(again) == offsets(now) and held_again.parts == held.parts
    # A record already waiting, given again, waits once.
    _, held_again = take(held, [part(1, 1, 60 * S)], behind=[0])
    assert offsets(held_again.parts[1]) == [(1, 1), (1, 2)]
    # Partition 0 reads on to 60 s: what is within its slack goes, in offset order.
    now, held = take(held, [part(0, 1, 60 * S - HOLD_SLACK_MS + 1)], behind=[0])
    assert offsets(now) == [(0, 1), (1, 1)]
    now, held = take(held, [], behind=[])  # caught up
    assert offsets(now) == [(1, 2)] and first_held(held) == {}


def test_a_partition_behind_that_gave_nothing_yet_holds_every_order() -> None:
    now, held = take(Held(), [part(1, 0, 10 * S)], behind=[0])
    assert now == [] and first_held(held) == {1: 0}
    assert first_held(drop(held, [1])) == {}  # revoked: its next owner reads it again
    now, _ = take(held, [], behind=[])
    assert offsets(now) == [(1, 0)]


def test_a_held_envelope_holds_what_is_newer_than_its_oldest_event() -> None:
    """Partition 1's envelope spans 20 s to 900 s of show and waits for partition 0
    (behind at 300 s). Partition 2's order at 400 s must wait as well, and partition 0's
    own at 300 s: applied now, they would go before partition 1's orders from 20 s on.
    One at 21 s goes (the slack)."""
    envelope = Part(Record("lc.order-events", 1, 0, b""), [
        *part(1, 0, 20 * S).events, *part(1, 1, 900 * S).events], frozenset({"r"}))
    now, held = take(Held(), [part(0, 0, 300 * S), envelope, part(2, 0, 21 * S),
                              part(2, 1, 400 * S)], behind=[0])
    assert offsets(now) == [(2, 0)]
    assert first_held(held) == {0: 0, 1: 0, 2: 1}
    now, held = take(held, [], behind=[])
    assert offsets(now) == [(0, 0), (1, 0), (2, 1)] and first_held(held) == {}
