"""The stock coalescer: per SKU at most one update per interval, and the newest value of
each SKU always goes out in the end (Hypothesis over offers and flushes)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.models import StockUpdate
from stream.worker.stockfeed import Coalescer

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
