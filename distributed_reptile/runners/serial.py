"""SerialRunner: every inner loop in this process, one after another (the reference backend)."""

from __future__ import annotations

from collections.abc import Iterator

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.runners.base import LearnerFactory, TaskFailedError
from distributed_reptile.weights import NumpyWeights


class SerialRunner:
    """Runs tasks in-process with the same :class:`InnerLearner` code the Ray actors run."""

    def __init__(self, learner_factory: LearnerFactory) -> None:
        self.learner = learner_factory()
        self.num_workers = 1

    def run_batch(self, jobs: list[TaskJob], meta_weights: NumpyWeights) -> Iterator[AdaptedResult]:
        for job in sorted(jobs, key=lambda j: j.index):
            try:
                yield self.learner.run(job, meta_weights)
            except (ValueError, TypeError):
                raise
            except Exception as exc:
                raise TaskFailedError(job, exc, worker="the serial runner") from exc

    def close(self) -> None:
        self.learner.model = None
