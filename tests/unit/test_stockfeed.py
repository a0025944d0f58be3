"""The stock coalescer: leading edge after a quiet interval, trailing edge otherwise, at
most one update per SKU per interval, the newest value always, nothing sent twice
(examples, and Hypothesis over offers and flushes)."""

from __future__ import annotations

import asyncio
import random
import time
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.models import StockUpdate
from stream.worker.stockfeed import Coalescer, StockFeed

INTERVAL = 0.1

steps = st.lists(st.tuples(
    st.floats(min_value=0, max_value=0.25),  # time passing before the step
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 60)), max_size=5),
), max_size=40)


@given(steps)
@settings(max_examples=300, deadline=None)
def test_at_most_one_per_interval_and_the_newest_always_sent(
        script: list[tuple[float, list[tuple[str, int]]]]) -> None:
    coalescer = Coalescer(interval_s=INTERVAL)
    now = 0.0
    sent: list[tuple[float, StockUpdate]] = []
    offered: dict[str, int] = {}
    for wait, offers in script:
        now += wait
        coalescer.offer([StockUpdate(room_id="r", sku=sku, available=version, reserved=0,
                                     sold=0, version=version, ts=0) for sku, version in offers])
        for sku, version in offers:
            offered[sku] = max(offered.get(sku, 0), version)
        sent += [(now, u) for u in coalescer.due(now)]
    last = now + 2 * INTERVAL  # the last flush, clear of float rounding at one interval
    sent += [(last, u) for u in coalescer.due(last)]
    by_sku: dict[str, list[tuple[float, int]]] = {}
    for at, u in sent:
        by_sku.setdefault(u.sku, []).append((at, u.version))
    for updates in by_sku.values():
        times = [t for t, _ in updates]
        assert all(b - a >= INTERVAL - 1e-9 for a, b in pairwise(times))
        versions = [v for _, v in updates]
        assert versions == sorted(set(versions)), "an older value after a newer one"
    assert {sku: v[-1][1] for sku, v in by_sku.items()} == offered
    assert len(coalescer) == 0



def update(version: int, *, sku: str = "rice", room: str = "r1") -> StockUpdate:
    return StockUpdate(room_id=room, sku=sku, available=1000 - version, reserved=version,
                       sold=0, version=version, ts=version)


def test_the_first_change_after_a_quiet_interval_goes_out_at_once() -> None:
    c = Coalescer(interval_s=INTERVAL)
    c.offer([update(1)])
    assert c.due(10.0) == [update(1)]
    # Quiet for a whole interval: the next change is not held either.
    c.offer([update(2)])
    assert c.due(10.0 + INTERVAL) == [update(2)]
    assert len(c) == 0 and c.next_due() is None


def test_a_change_inside_the_interval_is_held_until_the_interval_ends() -> None:
    c = Coalescer(interval_s=INTERVAL)
    c.offer([update(1)])
    assert c.due(10.0) == [update(1)]
    c.offer([update(2), update(3)])
    assert c.due(10.05) == []
    # The trailing edge is when the interval that began with the last send ends.
    assert c.next_due() == 10.0 + INTERVAL
    assert c.due(10.0 + INTERVAL) == [update(3)]


def test_a_burst_is_coalesced_and_its_last_value_goes_out() -> None:
    c = Coalescer(interval_s=INTERVAL)
    sent: list[tuple[float, StockUpdate]] = []
    now = 50.0
    # 1,000 changes a second for 2 s, a batch every 10 ms, flushed after each batch.
    version = 0
    for _ in range(200):
        c.offer([update(version := version + 1) for _ in range(10)])
        sent += [(now, u) for u in c.due(now)]
        now += 0.01
    # The burst is over: the held value goes out when its interval ends.
    due = c.next_due()
    assert due is not None
    sent += [(due, u) for u in c.due(due)]
    times = [t for t, _ in sent]
    assert all(b - a >= INTERVAL - 1e-9 for a, b in pairwise(times))
    assert len(sent) <= 2.0 / INTERVAL + 1
    assert sent[-1][1] == update(version)
    versions = [u.version for _, u in sent]
    assert versions == sorted(set(versions))


def test_nothing_is_sent_twice_nor_goes_back_in_version() -> None:
    c = Coalescer(interval_s=INTERVAL)
    c.offer([update(5)])
    assert c.due(1.0) == [update(5)]
    # Kafka redelivers (at-least-once): old and equal versions change nothing.
    c.offer([update(3), update(5)])
    assert c.due(2.0) == [] and len(c) == 0
    c.offer([update(7), update(6)])
    assert c.due(3.0) == [update(7)]


def test_skus_are_coalesced_each_on_its_own_interval() -> None:
    c = Coalescer(interval_s=INTERVAL)
    c.offer([update(1, sku="a")])
    assert c.due(1.0) == [update(1, sku="a")]
    c.offer([update(1, sku="b"), update(2, sku="a")])
    # b was quiet: leading edge; a was sent 50 ms ago: held to 1.1.
    assert c.due(1.05) == [update(1, sku="b")]
    assert c.next_due() == 1.0 + INTERVAL
    c.offer([update(2, sku="b")])
    assert c.next_due() == 1.0 + INTERVAL
    assert c.due(1.1) == [update(2, sku="a")]
    assert c.next_due() == 1.05 + INTERVAL
    assert c.due(1.05 + INTERVAL) == [update(2, sku="b")]


def test_random_offers_keep_every_promise() -> None:
    rng = random.Random(19)
    c = Coalescer(interval_s=INTERVAL)
    latest: dict[str, int] = {}
    last_sent: dict[str, tuple[float, int]] = {}
    now = 0.0
    for _ in range(5000):
        now += rng.expovariate(200)
        sku = rng.choice("abc")
        latest[sku] = latest.get(sku, 0) + rng.randint(0, 2)
        c.offer([update(latest[sku] - rng.randint(0, 1), sku=sku), update(latest[sku], sku=sku)])
        for u in c.due(now):
            at, version = last_sent.get(u.sku, (-1.0, -1))
            assert now - at >= INTERVAL - 1e-9 and u.version > version
            last_sent[u.sku] = (now, u.version)
        due = c.next_due()
        assert due is None or due > now
    while (due := c.next_due()) is not None:
        for u in c.due(due):
            last_sent[u.sku] = (due, u.version)
    # The newest value of every SKU went out in the end.
    assert {s: v for s, (_, v) in last_sent.items()} == latest


async def test_the_feed_sends_the_trailing_edge_without_another_flush() -> None:
    published: list[tuple[float, list[StockUpdate]]] = []
    arrived = asyncio.Event()

    async def publish(updates: list[StockUpdate]) -> None:
        published.append((time.monotonic(), updates))
        arrived.set()

    feed = StockFeed(publish, clock=time.monotonic, interval_s=0.05)
    runner = asyncio.create_task(feed.trailing())
    try:
        feed.offer([update(1)])
        assert await feed.flush() == 1  # the leading edge, from the batch path
        feed.offer([update(2)])
        assert await feed.flush() == 0  # held: sent 0 ms ago
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)
        assert [u for _, batch in published for u in batch] == [update(1), update(2)]
        assert published[1][0] - published[0][0] >= 0.05 - 0.002  # the loop's ms timers
        assert len(feed.coalescer) == 0
    finally:
        runner.cancel()
