"""The adapted results of one outer step as the meta-update reads them: in task order, checked.

How results reach the driver is declared by the algorithm class (``combine``):

* ``"all"``: every task's adapted weights, checked here for NaN and infinities;
* ``"sum"``: the workers fold each call's tasks into an exact partial sum
  (:mod:`distributed_reptile.reduction`) and send statistics per task; the partial sums are
  merged here into :attr:`CheckedResults.total`, and the tasks the workers found non-finite
  are refused or skipped here, in task order, as on the other path.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.records import TaskOutcome
from distributed_reptile.reduction import FixedSum
from distributed_reptile.seeding import task_seeds
from distributed_reptile.tasks.spec import TaskSpec
from distributed_reptile.weights import module_to_numpy, non_finite_names

#: The values of an algorithm class's ``combine`` declaration.
COMBINE_MODES = ("all", "sum")


class NonFiniteWeightsError(RuntimeError):
    """An adapted weight is NaN or infinite; it was not folded into the meta weights."""


class CheckedResults:
    """The runner's results in task order, with the driver's waits timed and non-finite weights
    refused (``on_nonfinite="raise"``) or left out (``"skip"``); keeps what the step record needs.

    :param results: the runner's results, in task order.
    :param on_nonfinite: ``"raise"`` or ``"skip"``.
    :param total: for results reduced by the workers (``combine = "sum"``): the sum their
        partial sums are merged into as they pass (``None``: results carry their weights).
    """

    def __init__(
        self, results: Iterator[AdaptedResult], on_nonfinite: str, total: FixedSum | None = None
    ) -> None:
        self._results = results
        self.on_nonfinite = on_nonfinite
        self.total = total
        self.wait_seconds = 0.0
        self.outcomes: list[TaskOutcome] = []
        self.skipped: list[int] = []

    def __iter__(self) -> Iterator[AdaptedResult]:
        while True:
            t0 = time.perf_counter()
            try:
                result = next(self._results)
            except StopIteration:
                self.wait_seconds += time.perf_counter() - t0
                return
            self.wait_seconds += time.perf_counter() - t0
            if self.total is not None:
                # The worker left non-finite tasks out of the call's sum, which may ride on one.
                if result.partial is not None:
                    self.total.merge(result.partial)
                bad = result.nonfinite
            else:
                bad = non_finite_names(result.weights)
            if bad:
                msg = (
                    f"Task meta_step={result.meta_step} (info={result.task.get('info')}) produced "
                    f"non-finite adapted weights in {bad[:5]}; they were not folded into the meta "
                    "weights. Lower the inner learning rate or clip gradients (max_grad_norm), or "
                    "pass on_nonfinite='skip'."
                )
                if self.on_nonfinite == "raise":
                    close = getattr(self._results, "close", None)
                    if close is not None:
                        close()  # lets the runner wait for the tasks still in flight
                    raise NonFiniteWeightsError(msg)
                warnings.warn(msg + " Skipped.", RuntimeWarning, stacklevel=2)
                self.skipped.append(result.meta_step)
                continue
            self.outcomes.append(TaskOutcome.of(result))
            yield result


def step_results(trainer: Any, jobs: list[TaskJob]) -> CheckedResults:
    """Run one outer step's ``jobs`` on ``trainer.runner`` from the meta weights, the way the
    trainer's class declares (``combine``); the checked stream its ``meta_update`` reads.

    ``"sum"`` needs ``trainer.task_reducer()`` (what the workers fold each task with: see
    :class:`~distributed_reptile.FirstOrderMetaAlgorithm`).
    """
    combine = getattr(type(trainer), "combine", "all")
    if combine not in COMBINE_MODES:
        raise ValueError(
            f"{type(trainer).__name__}.combine is {combine!r}; it must be one of {COMBINE_MODES}."
        )
    meta_weights = module_to_numpy(trainer.meta_policy)
    if combine == "all":
        return CheckedResults(trainer.runner.run_batch(jobs, meta_weights), trainer.on_nonfinite)
    task_reducer = getattr(trainer, "task_reducer", None)
    if task_reducer is None:
        raise TypeError(
            f'{type(trainer).__name__} declares combine = "sum" but has no task_reducer(): '
            'subclass FirstOrderMetaAlgorithm, or declare combine = "all".'
        )
    stream = trainer.runner.run_batch(jobs, meta_weights, reducer=task_reducer())
    return CheckedResults(stream, trainer.on_nonfinite, total=FixedSum())


__all__ = ["COMBINE_MODES", "CheckedResults", "NonFiniteWeightsError", "step_results"]


def step_jobs(
    specs: list[TaskSpec], seed: int, outer: int, inner_root: str | None
) -> list[TaskJob]:
    """The jobs of outer step ``outer`` (0-based): one per task, seeded from (run seed, meta
    step), with its inner TensorBoard folder under ``inner_root`` when inner logs are on."""
    seeds = task_seeds(seed, [spec.meta_step for spec in specs])
    return [
        TaskJob(
            spec=spec,
            task_seed=seeds[i],
            index=i,
            tb_log_dir=None
            if inner_root is None
            else os.path.join(
                inner_root, f"inner_outer_{outer + 1}_task_{i + 1}_meta_{spec.meta_step}"
            ),
        )
        for i, spec in enumerate(specs)
    ]
