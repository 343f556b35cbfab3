"""95% Clopper-Pearson confidence intervals for accuracies measured on n points.

An accuracy on the first n test images is a binomial proportion k / n; its exact (Clopper-Pearson) interval is
[B(a/2; k, n-k+1), B(1-a/2; k+1, n-k)] with B the beta quantile (scipy.stats.beta.ppf), 0 and 1 at the ends. It
is conservative (covers at least 95%). At n = 1000 and 50% it spans about +-3.2 points, at n = 100 about +-10: a
reader comparing two robust accuracies must see that. Every results.json, curve.json and compare JSON carries the
intervals (``*_ci`` keys, fractions) next to the numbers, and every table prints them.
"""

from __future__ import annotations

import math

LEVEL = 0.95
METHOD = "Clopper-Pearson (exact binomial)"


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` interval (lo, hi) for a proportion of ``k`` successes in ``n`` trials; (0, 1) when n = 0."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def interval(fraction: float | None, n: int | None, level: float = LEVEL) -> list[float] | None:
    """The interval of an accuracy given as a fraction of n points (k = round(fraction * n)); None if unknown."""
    if fraction is None or n is None or n <= 0 or not math.isfinite(fraction):
        return None
    return list(clopper_pearson(round(fraction * n), n, level))


def describe() -> dict[str, object]:
    """What the ``*_ci`` keys mean, for the JSON that carries them."""
    return {"level": LEVEL, "method": METHOD, "units": "fraction (0-1), like the accuracy beside it"}


def format_ci(ci: list[float] | tuple[float, float] | None) -> str:
    """'[82.9, 87.3]' (percent), or '' when unknown."""
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def pct_ci(value: float | None, ci: list[float] | tuple[float, float] | None) -> str:
    """'85.20% [82.9, 87.3]'; '-' without a value."""
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" + (f" {format_ci(ci)}" if ci is not None else "")
