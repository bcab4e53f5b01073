"""The adapted results of one outer step as the meta-update reads them: in task order, checked."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator

from distributed_reptile.inner.learner import AdaptedResult
from distributed_reptile.records import TaskOutcome
from distributed_reptile.weights import non_finite_names


class NonFiniteWeightsError(RuntimeError):
    """An adapted weight is NaN or infinite; it was not folded into the meta weights."""


class CheckedResults:
    """The runner's results in task order, with the driver's waits timed and non-finite weights
    refused (``on_nonfinite="raise"``) or left out (``"skip"``); keeps what the step record needs."""

    def __init__(self, results: Iterator[AdaptedResult], on_nonfinite: str) -> None:
        self._results = results
        self.on_nonfinite = on_nonfinite
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
