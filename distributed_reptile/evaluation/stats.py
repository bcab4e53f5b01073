"""Confidence intervals for meta-test returns: Student-t intervals over tasks (and training seeds).

The evaluation compares initialisations task by task, so the statistics here are the mean of a
sample with its two-sided t-interval, and the same for paired differences. The Student-t quantile
is computed here (regularised incomplete beta, then bisection) so that the package needs no SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from distributed_reptile.evaluation.core import Budgets

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


# ---------------------------------------------------------------------------- reports
def _pair(
    ref: np.ndarray, other: np.ndarray, ref_name: str, other_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Align two ``(seeds, tasks)`` arrays unit by unit (a single seed is paired with every seed)."""
    if ref.shape == other.shape:
        return ref, other
    if other.shape[0] == 1:
        return ref, np.broadcast_to(other, ref.shape)
    if ref.shape[0] == 1:
        return np.broadcast_to(ref, other.shape), other
    raise ValueError(
        f"Cannot pair {ref_name!r} ({ref.shape[0]} weight sets) with {other_name!r} "
        f"({other.shape[0]}): give both the same number (one per training seed) or one of them a single set."
    )


def summarize(
    per_unit: Mapping[str, np.ndarray],
    budgets: Budgets,
    reference: str = "meta",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Means, t-intervals and paired differences of per-task returns.

    :param per_unit: name -> array ``(n_seeds, n_tasks, n_budgets)`` of mean episode returns
        (one row per training seed's weights; every init on the same tasks, in the same order).
    :param budgets: the budgets of the last axis.
    :param reference: the initialisation compared with each other one (``reference - other``).
    :param confidence: coverage of the intervals.
    :return: a JSON-ready dict:

        * ``inits[name]["budgets"]``: per budget, the t-interval over all units (tasks x seeds),
          the per-seed means and the t-interval across seed means (``across_seeds``);
        * ``inits[name]["adaptation_gain"]``: per budget, return minus the return at the smallest
          budget, paired by unit (is the init adapting, or only pretrained?);
        * ``paired["<reference> - <other>"]``: per budget, the paired difference by unit and
          across seed means;
        * ``per_task``: the input arrays as nested lists.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_unit.items()}
    n_b = len(budgets.env_steps)
    n_tasks = None
    for name, arr in arrays.items():
        if arr.ndim != 3 or arr.shape[2] != n_b:
            raise ValueError(
                f"{name!r}: expected an array (seeds, tasks, {n_b} budgets), got shape {arr.shape}."
            )
        if n_tasks is not None and arr.shape[1] != n_tasks:
            raise ValueError("Every initialisation must be evaluated on the same tasks.")
        n_tasks = arr.shape[1]
    if reference not in arrays:
        raise ValueError(
            f"The reference initialisation {reference!r} is not among {sorted(arrays)}."
        )

    def budget_fields(b: int) -> dict[str, Any]:
        return {
            "label": budgets.label(b),
            "env_steps": budgets.env_steps[b],
            "rollouts": None if budgets.rollouts is None else budgets.rollouts[b],
        }

    inits: dict[str, Any] = {}
    for name, arr in arrays.items():
        rows, gains = [], []
        for b in range(n_b):
            values = arr[:, :, b]
            seed_means = values.mean(axis=1)
            rows.append(
                {
                    **budget_fields(b),
                    **t_interval(values.ravel(), confidence),
                    "seed_means": seed_means.tolist(),
                    "across_seeds": t_interval(seed_means, confidence),
                }
            )
            gains.append(
                {
                    **budget_fields(b),
                    **paired_difference(values.ravel(), arr[:, :, 0].ravel(), confidence),
                    "across_seeds": t_interval(seed_means - arr[:, :, 0].mean(axis=1), confidence),
                }
            )
        inits[name] = {"n_seeds": int(arr.shape[0]), "budgets": rows, "adaptation_gain": gains}

    paired: dict[str, Any] = {}
    ref = arrays[reference]
    for name, arr in arrays.items():
        if name == reference:
            continue
        rows = []
        for b in range(n_b):
            a, o = _pair(ref[:, :, b], arr[:, :, b], reference, name)
            rows.append(
                {
                    **budget_fields(b),
                    **paired_difference(a.ravel(), o.ravel(), confidence),
                    "across_seeds": t_interval(a.mean(axis=1) - o.mean(axis=1), confidence),
                }
            )
        paired[f"{reference} - {name}"] = rows

    return {
        "confidence": confidence,
        "reference": reference,
        "budgets": budgets.as_dict(),
        "n_tasks": int(n_tasks or 0),
        "inits": inits,
        "paired": paired,
        "per_task": {k: v.tolist() for k, v in arrays.items()},
        "notes": (
            "Intervals are two-sided Student-t intervals. 'mean'/'ci_*' treat every (training seed, "
            "task) pair as one unit; 'across_seeds' uses one value per training seed (the mean over "
            "tasks), the more conservative view of seed-to-seed variation."
        ),
    }


def budget_axis(budgets: Mapping[str, Any]) -> tuple[list[int], str]:
    """The x values and axis label of a report's budgets (rollouts where known)."""
    if budgets.get("rollouts") is not None:
        return list(
            budgets["rollouts"]
        ), f"adaptation budget (inner rollouts of {budgets['rollout_steps']} env steps)"
    return list(budgets["env_steps"]), "adaptation budget (env steps)"


__all__ = [
    "budget_axis",
    "paired_difference",
    "regularized_incomplete_beta",
    "student_t_cdf",
    "student_t_ppf",
    "summarize",
    "t_interval",
]
