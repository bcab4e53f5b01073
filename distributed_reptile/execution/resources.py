"""What a run asks of a Ray cluster, checked against what the cluster has before anything waits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: ``worker_resources`` keys that are actor options, not resources.
NOT_RESOURCES = frozenset({"scheduling_strategy", "runtime_env", "accelerator_type"})


class InsufficientResourcesError(ValueError):
    """A run asks for more than the cluster has: the message says what was asked, what exists,
    and the setting that fits."""


def worker_bundle(worker_resources: Mapping[str, Any] | None) -> dict[str, float]:
    """The Ray resources one inner-loop worker asks for (``num_cpus`` defaults to 1)."""
    bundle = {"CPU": 1.0}
    for key, value in (worker_resources or {}).items():
        if key in NOT_RESOURCES:
            continue
        if key == "num_cpus":
            bundle["CPU"] = float(value)
        elif key == "num_gpus":
            bundle["GPU"] = float(value)
        elif key == "resources" and isinstance(value, Mapping):
            bundle.update({k: float(v) for k, v in value.items()})
        else:
            bundle[key] = float(value)
    return {k: v for k, v in bundle.items() if v > 0}


def check_fits(
    bundles: Sequence[Mapping[str, float]],
    cluster: Mapping[str, float],
    what: str,
    fix: str,
) -> None:
    """Raise :class:`InsufficientResourcesError` when the sum of ``bundles`` exceeds the
    cluster's totals (``ray.cluster_resources()``) in any resource.

    :param bundles: what each actor (or placement-group bundle) asks for.
    :param cluster: the cluster's total resources.
    :param what: the request in words, e.g. ``"num_workers=10 workers"``.
    :param fix: the change that fits, e.g. ``"--set num_workers=2"``.
    """
    demand: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            demand[key] = demand.get(key, 0.0) + float(value)
    short = {k: v for k, v in demand.items() if v > float(cluster.get(k, 0.0)) + 1e-9}
    if not short:
        return
    asked = ", ".join(f"{v:g} {k}" for k, v in sorted(short.items()))
    has = ", ".join(f"{float(cluster.get(k, 0.0)):g} {k}" for k in sorted(short))
    raise InsufficientResourcesError(
        f"{what} ask for {asked}; the Ray cluster has {has} in all, so they could never all "
        f"start. {fix}"
    )


def workers_that_fit(bundle: Mapping[str, float], cluster: Mapping[str, float]) -> int:
    """How many workers of ``bundle`` the cluster's totals hold."""
    counts = [math.floor(float(cluster.get(k, 0.0)) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return max(0, min(counts)) if counts else 0


def check_pool_fits(
    num_workers: int,
    worker_resources: Mapping[str, Any] | None,
    cluster: Mapping[str, float],
    driver_cpus: float = 0.0,
) -> None:
    """Refuse ``num_workers`` workers (plus a driver bundle of ``driver_cpus``, as a Tune trial
    holds) that ``cluster`` can never hold, naming the ``num_workers`` that fits."""
    worker = worker_bundle(worker_resources)
    spare = {**cluster, "CPU": float(cluster.get("CPU", 0.0)) - driver_cpus}
    fit = workers_that_fit(worker, spare)
    per_worker = ", ".join(f"{v:g} {k}" for k, v in sorted(worker.items()))
    pool = f"num_workers={num_workers} workers of {per_worker} each"
    driver = [{"CPU": driver_cpus}] if driver_cpus > 0 else []
    check_fits(
        driver + [worker] * num_workers,
        cluster,
        f"Each trial (its driver, {driver_cpus:g} CPU, and {pool}) would" if driver else pool,
        f"Use --set num_workers={fit} (the most that fit), or lower worker_resources."
        if fit > 0
        else "Lower worker_resources to what a node has.",
    )
