"""What every runner offers the trainer: tasks in, adapted results out, in task order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob
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

    def run_batch(self, jobs: list[TaskJob], meta_weights: NumpyWeights) -> Iterator[AdaptedResult]:
        """Yield one result per job, in job order (``job.index``)."""
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


def check_task_retries(task_retries: int) -> int:
    """``task_retries`` as an int >= 0, or a ValueError that names the fix."""
    if isinstance(task_retries, bool) or not isinstance(task_retries, int) or task_retries < 0:
        raise ValueError(
            f"task_retries must be an integer >= 0 (0: no retry), got {task_retries!r}."
        )
    return task_retries


def check_tasks_per_call(tasks_per_call: int | str) -> int | str:
    """``tasks_per_call`` as an int >= 1 or ``"auto"``, or a ValueError that names the fix."""
    if tasks_per_call == "auto":
        return "auto"
    if (
        isinstance(tasks_per_call, bool)
        or not isinstance(tasks_per_call, int)
        or tasks_per_call < 1
    ):
        raise ValueError(
            "tasks_per_call must be an integer >= 1 (tasks sent to a Ray worker in one call) or "
            f"'auto' (the batch split evenly over the workers), got {tasks_per_call!r}."
        )
    return tasks_per_call
