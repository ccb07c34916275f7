"""The study's statistics beyond one interval: paired tests, Holm's correction, power.

- :func:`paired_test`: the two-sided one-sample t-test of paired differences (scipy's ``ttest_1samp``).
- :func:`holm`: Holm's step-down adjustment of a family of p-values (Holm 1979), as statsmodels'
  ``multipletests(method="holm")`` computes it.
- :func:`format_p`: a p-value as the book prints it (``< 0.001`` below that, never ``0.000``).
- :func:`power` / :func:`detectable_difference` / :func:`seeds_needed`: the power of a two-sided paired
  t-test from the noncentral t distribution (scipy's ``nct``), as statsmodels' ``TTestPower`` computes it:
  with ``n`` paired seeds whose differences have standard deviation ``sd``, a true mean difference ``delta``
  gives the statistic a noncentral t distribution with ``n − 1`` degrees of freedom and noncentrality
  ``delta·√n / sd``, and the power is the chance that ``|t|`` exceeds the test's critical value.

The tests pin these against statsmodels' values (``tests/test_stats.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats


def paired_test(differences: Sequence[float]) -> tuple[float, float]:
    """(t statistic, two-sided p-value) of the mean of ``differences`` against zero (NaN values dropped;
    NaN for fewer than 2 values, or when every difference is the same)."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2 or np.all(d == d[0]):
        return math.nan, math.nan
    result = stats.ttest_1samp(d, 0.0)
    return float(result.statistic), float(result.pvalue)


def format_p(p: float | None) -> str:
    """A p-value as a reader compares it: three decimals, ``< 0.001`` below that, empty when untested."""
    if p is None or math.isnan(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float, name: str = "Holm p") -> str:
    """A p-value in a sentence: ``Holm p = 0.017``, or ``Holm p < 0.001`` (:func:`format_p`)."""
    text = format_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def seed_range(n: Sequence[int]) -> str:
    """How many paired seeds a set of comparisons rests on: ``15``, or ``15–20`` where they differ."""
    return "–".join(str(k) for k in sorted({int(min(n)), int(max(n))}))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given: sorted ascending, the k-th smallest (0-based) times
    ``m − k``, made non-decreasing, capped at 1. A comparison is significant at family-wise level α when its
    adjusted p-value is ≤ α. NaN entries (no test) stay NaN and do not count in ``m``."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """The probability that a two-sided paired t-test at level ``alpha`` over ``n`` seeds rejects "no
    difference" when the true mean difference is ``delta`` and the differences' SD is ``sd``."""
    df, nc = n - 1, delta * math.sqrt(n) / sd
    critical = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = float(stats.nct.sf(critical, df, nc)), float(stats.nct.cdf(-critical, df, nc))
    # scipy's nct can return NaN deep in the tail opposite the effect, where the probability is ~0
    if nc >= 0 and math.isnan(lower):
        lower = 0.0
    if nc < 0 and math.isnan(upper):
        upper = 0.0
    return upper + lower


def detectable_difference(sd: float, n: int, alpha: float = 0.05, target: float = 0.8) -> float:
    """The smallest true mean difference (in the units of ``sd``) that a two-sided paired t-test at level
    ``alpha`` over ``n`` seeds detects with probability ``target``."""
    if n < 2 or sd <= 0:
        raise ValueError(f"need n >= 2 seeds and sd > 0, got n={n}, sd={sd}")
    high = sd
    while power(high, sd, n, alpha) < target:
        high *= 2
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha) - target, 0.0, high, xtol=1e-12))


def seeds_needed(delta: float, sd: float, alpha: float = 0.05, target: float = 0.8,
                 largest: int = 1000) -> int:
    """The fewest paired seeds with which a true mean difference ``delta`` is detected with probability
    ``target`` (two-sided paired t-test at level ``alpha``); ``ValueError`` beyond ``largest``."""
    for n in range(2, largest + 1):
        if power(delta, sd, n, alpha) >= target:
            return n
    raise ValueError(f"more than {largest} seeds are needed to detect {delta} with sd {sd}")
