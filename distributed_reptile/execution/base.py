"""What an execution backend gives the outer loop: a task source, a runner, and a close."""

from __future__ import annotations

from typing import Any, Protocol

from distributed_reptile.runners.base import LearnerFactory, Runner, TaskSourceHandle
from distributed_reptile.settings import ExecutionSettings


class Backend(Protocol):
    """Where inner loops run. Built by :func:`distributed_reptile.execution.open_backend`.

    A backend is opened (connecting to whatever it runs on), then asked for the task source and
    the runner the outer loop uses, and closed once the trainer is done with them.
    """

    #: The name it is registered under (``backend=...``).
    name: str
    settings: ExecutionSettings

    @property
    def num_workers(self) -> int:
        """Inner loops that run at once."""
        ...

    def make_task_source(
        self, generator_cls: type, generator_params: dict[str, Any]
    ) -> TaskSourceHandle:
        """The task source the outer loop samples from (it owns the generator)."""
        ...

    def make_runner(self, learner_factory: LearnerFactory) -> Runner:
        """The runner of inner loops; ``learner_factory`` builds one InnerLearner per worker."""
        ...

    def close(self) -> None:
        """Release what opening took (e.g. a Ray instance the backend started)."""
        ...
