"""The uplift of a nudge with its uncertainty: a 95% interval and a verdict (pure).

The uplift is the difference of two proportions, treatment rate minus holdout rate.
Its interval is Newcombe's hybrid score interval (Newcombe 1998, "Interval estimation
for the difference between independent proportions", Statistics in Medicine 17, method
10): the Wilson score interval of each rate, combined. We chose it over the textbook
Wald interval because a holdout arm is small (10% of viewers) and its rate often 0 or
near it, where Wald collapses to a zero-width interval; Newcombe's stays inside
[-1, 1] and keeps close to 95% coverage down to a handful of viewers per arm.
"""

from __future__ import annotations

import math
from typing import Literal

Verdict = Literal["better", "worse", "not yet clear"]

# z for a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of successes / n (n > 0)."""
    if n <= 0:
        raise ValueError(f"n: must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes: must be within 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Clamp the rounding at the ends (p = 0 or 1 give exactly 0 or 1 in exact arithmetic).
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, *, z: float = Z95) -> tuple[float, float]:
    """The hybrid score interval of x1/n1 - x2/n2 (Newcombe's method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z=z)
    l2, u2 = wilson(x2, n2, z=z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, lo), min(1.0, hi)


def uplift_interval(treated_converted: int, treated: int, held_converted: int,
                    held: int) -> tuple[float, float] | None:
    """The 95% interval of treatment rate - holdout rate; None until both arms have viewers."""
    if treated <= 0 or held <= 0:
        return None
    return newcombe(treated_converted, treated, held_converted, held)


def verdict(interval: tuple[float, float] | None) -> Verdict:
    """`better` when the whole interval is above zero, `worse` when below, else not yet."""
    if interval is None:
        return "not yet clear"
    lo, hi = interval
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "not yet clear"
