"""SerialRunner: every inner loop in this process, one after another (the reference backend)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.reduction import TaskReducer
from distributed_reptile.runners.base import (
    NOT_RETRIED,
    LearnerFactory,
    TaskFailedError,
    check_task_retries,
)
from distributed_reptile.weights import NumpyWeights

logger = logging.getLogger(__name__)


class SerialRunner:
    """Runs tasks in-process with the same :class:`InnerLearner` code the Ray actors run.

    A task that raises is run again, from the same fresh start and with the same task seed, up to
    ``task_retries`` times, so a run that recovers ends with the weights of an undisturbed run.
    ``ValueError`` and ``TypeError`` mean bad input and are raised at once.

    :param learner_factory: builds the InnerLearner.
    :param task_retries: reruns of a task that raised before the run fails.
    """

    def __init__(self, learner_factory: LearnerFactory, task_retries: int = 2) -> None:
        self.task_retries = check_task_retries(task_retries)
        self.learner = learner_factory()
        self.num_workers = 1
        #: One record per rerun, as the Ray runner's: ``kind`` (``"error"``), ``meta_step``,
        #: ``index``, ``attempt``, ``worker`` and ``reason``.
        self.retry_events: list[dict[str, Any]] = []

    def run_batch(
        self,
        jobs: list[TaskJob],
        meta_weights: NumpyWeights,
        reducer: TaskReducer | None = None,
    ) -> Iterator[AdaptedResult]:
        """See :meth:`Runner.run_batch`; with ``reducer`` every task is its own call (integer
        sums do not depend on the grouping, so this equals any other runner bit for bit)."""
        for job in sorted(jobs, key=lambda j: j.index):
            attempt = 1
            while True:
                try:
                    result = self.learner.run(job, meta_weights)
                    break
                except NOT_RETRIED:
                    raise
                except Exception as exc:
                    # The reused model may hold whatever state the failure left: rebuild it.
                    self.learner.model = None
                    if attempt > self.task_retries:
                        raise TaskFailedError(
                            job, exc, worker="the serial runner", attempts=attempt
                        ) from exc
                    reason = f"{type(exc).__name__}: {exc}"
                    self.retry_events.append(
                        {
                            "kind": "error",
                            "meta_step": job.spec.meta_step,
                            "index": job.index,
                            "attempt": attempt,
                            "worker": 0,
                            "reason": reason,
                        }
                    )
                    logger.warning(
                        "Task meta_step=%s failed (%s); running it again.",
                        job.spec.meta_step,
                        reason,
                    )
                    attempt += 1
            if reducer is not None:
                t_fold = time.perf_counter()
                reducer.reduce([result], meta_weights)
                result.timings["fold"] = time.perf_counter() - t_fold
            yield result

    def close(self) -> None:
        self.learner.model = None
