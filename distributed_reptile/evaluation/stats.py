"""Confidence intervals for meta-test returns: Student-t intervals over tasks (and training seeds).

The evaluation compares initialisations task by task, so the statistics here are the mean of a
sample with its two-sided t-interval, and the same for paired differences. The Student-t quantile
is computed here (regularised incomplete beta, then bisection) so that the package needs no SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

_CF_MAX_ITER = 300
_CF_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularised incomplete beta function, for ``0 <= x <= 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}.")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}.")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie strictly between 0 and 1, got {q}.")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if student_t_cdf(mid, df) < q:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` with its two-sided Student-t confidence interval.

    :param values: one number per unit (a task, or a task of one training seed).
    :param confidence: coverage of the interval (0.95 for a 95% interval).
    :return: ``mean``, ``ci_low``, ``ci_high``, ``half_width`` (NaN with fewer than two values),
        ``std`` (sample standard deviation, ``ddof=1``) and ``n``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("t_interval needs at least one value.")
    if not np.isfinite(arr).all():
        raise ValueError("t_interval got a NaN or infinite value: every task must have a return.")
    n = int(arr.size)
    mean = float(arr.mean())
    if n < 2:
        half, std = float("nan"), float("nan")
    else:
        std = float(arr.std(ddof=1))
        half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "half_width": half,
        "std": std,
        "n": n,
    }


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, Any]:
    """``a - b`` unit by unit, with the t-interval of the mean difference.

    :param a: one number per unit.
    :param b: one number per unit, in the same order.
    :param confidence: coverage of the interval.
    :return: :func:`t_interval` of the differences, plus ``excludes_zero`` (the interval lies on
        one side of zero) and ``sign`` (+1: ``a`` higher, -1: ``b`` higher, 0: not established).
    """
    arr_a = np.asarray(a, dtype=np.float64).reshape(-1)
    arr_b = np.asarray(b, dtype=np.float64).reshape(-1)
    if arr_a.shape != arr_b.shape:
        raise ValueError(
            f"paired_difference needs one value of each per unit: got {arr_a.size} and {arr_b.size}."
        )
    out = t_interval(arr_a - arr_b, confidence)
    excludes = bool(out["ci_low"] > 0 or out["ci_high"] < 0)
    out["excludes_zero"] = excludes
    out["sign"] = 0 if not excludes else (1 if out["mean"] > 0 else -1)
    return out


__all__ = [
    "paired_difference",
    "regularized_incomplete_beta",
    "student_t_cdf",
    "student_t_ppf",
    "t_interval",
]
