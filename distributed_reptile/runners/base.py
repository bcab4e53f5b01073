"""What every runner offers the trainer: tasks in, adapted results out, in task order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob
from distributed_reptile.reduction import TaskReducer
from distributed_reptile.settings import check_task_retries, check_tasks_per_call
from distributed_reptile.tasks.spec import TaskSpec
from distributed_reptile.weights import NumpyWeights

LearnerFactory = Callable[[], InnerLearner]

#: Errors that mean bad input (wrong spaces, wrong types): rerunning the task cannot fix them.
NOT_RETRIED: tuple[type[BaseException], ...] = (ValueError, TypeError)


class TaskSourceHandle(Protocol):
    """The trainer's view of the task source, local or a Ray actor."""

    def sample_specs(self, meta_steps: list[int], seeds: list[int | None]) -> list[TaskSpec]: ...

    def prefetch(self, steps: list[tuple[list[int], list[int | None]]]) -> None:
        """Start drawing the tasks of these outer steps (``(meta_steps, seeds)`` each); the next
        ``sample_specs`` calls with the same arguments return them. Unused, they are undone
        before anything else reads the source."""
        ...

    def reset_history(self) -> None: ...

    def history(self) -> list[dict[str, Any]] | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Runner(Protocol):
    """Runs inner loops; knows nothing of the meta-update."""

    num_workers: int
    #: One record per rerun or worker change: ``kind``, ``meta_step``, ``index``, ``attempt``,
    #: ``worker`` and ``reason``. A worker leaving the pool or coming back (``"worker_dropped"``,
    #: ``"worker_added"``) concerns no task (``meta_step`` None) and adds ``workers``, the workers
    #: up afterwards.
    retry_events: list[dict[str, Any]]

    def run_batch(
        self,
        jobs: list[TaskJob],
        meta_weights: NumpyWeights,
        reducer: TaskReducer | None = None,
    ) -> Iterator[AdaptedResult]:
        """Yield one result per job, in job order (``job.index``).

        Without ``reducer`` each result carries the task's adapted weights. With one (for an
        algorithm whose ``combine`` is ``"sum"``), where the tasks run each finished task is
        folded into one :class:`~distributed_reptile.reduction.FixedSum` per call of tasks run
        together (:meth:`TaskReducer.reduce <distributed_reptile.reduction.TaskReducer.reduce>`):
        results then carry statistics only, and the first result of each call its partial sum.
        A call is atomic: a rerun call's sum replaces the lost one, never adds to it. A runner
        may also combine the partial sums where they are (the Ray runner's node reduction) and
        hand over fewer of them: only the sum of every ``partial`` matters, not which result
        carries which.
        """
        ...

    def close(self) -> None: ...


class TaskFailedError(RuntimeError):
    """An inner loop failed (after its retries); the message names the task and the original error.

    :param job: the task that failed.
    :param cause: the original exception (the last attempt's).
    :param worker: where it ran, for the message.
    :param attempts: how many times the task was run.
    """

    def __init__(
        self, job: TaskJob, cause: BaseException, worker: str = "", attempts: int = 1
    ) -> None:
        spec = job.spec.describe()
        where = f" on {worker}" if worker else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"Inner loop of task meta_step={spec['meta_step']} (random_seed={spec['random_seed']}, "
            f"info={spec['info']}){where} failed{tries}: {type(cause).__name__}: {cause}"
        )
        self.job = job
        self.cause = cause
        self.attempts = attempts


__all__ = [
    "NOT_RETRIED",
    "LearnerFactory",
    "Runner",
    "TaskFailedError",
    "TaskSourceHandle",
    "check_task_retries",
    "check_tasks_per_call",
]
