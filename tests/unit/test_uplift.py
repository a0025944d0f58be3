"""The uplift interval against Newcombe's published values, and its verdict."""

from __future__ import annotations

import pytest

from stream.hostview.uplift import newcombe, uplift_interval, verdict, wilson

# Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score,
# no continuity correction): (x1, n1, x2, n2) -> the published 95% limits, 4 decimals.
PUBLISHED = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]


@pytest.mark.parametrize(("counts", "limits"), PUBLISHED)
def test_the_interval_matches_newcombes_table(counts: tuple[int, int, int, int],
                                              limits: tuple[float, float]) -> None:
    lo, hi = newcombe(*counts)
    assert (round(lo, 4), round(hi, 4)) == limits


def test_wilson_matches_its_closed_form_at_the_ends() -> None:
    # 0 of n: the upper limit is z^2 / (n + z^2); n of n: the lower is n / (n + z^2).
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    with pytest.raises(ValueError, match="successes"):
        wilson(11, 10)


def test_no_interval_until_both_arms_have_viewers() -> None:
    assert uplift_interval(3, 10, 0, 0) is None
    assert uplift_interval(0, 0, 1, 5) is None
    assert verdict(None) == "not yet clear"


@pytest.mark.parametrize(("counts", "expected"), [
    ((56, 70, 48, 80), "better"),   # (0.052, 0.334): all above zero
    ((48, 80, 56, 70), "worse"),    # the same, arms swapped
    ((5, 56, 0, 29), "not yet clear"),  # (-0.038, 0.193) spans zero
])
def test_verdict_follows_the_interval(counts: tuple[int, int, int, int],
                                      expected: str) -> None:
    assert verdict(uplift_interval(*counts)) == expected


def test_the_interval_narrows_as_the_arms_grow() -> None:
    small = uplift_interval(3, 10, 1, 10)
    big = uplift_interval(300, 1000, 100, 1000)
    assert small is not None and big is not None
    assert big[1] - big[0] < small[1] - small[0]
    assert big[0] < 0.2 < big[1]  # the true difference of the rates, 0.3 - 0.1
