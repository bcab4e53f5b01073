"""The serial backend: every inner loop in the driver's process, one after another."""

from __future__ import annotations

from typing import Any

from distributed_reptile.runners.base import LearnerFactory, Runner, TaskSourceHandle
from distributed_reptile.runners.serial import SerialRunner
from distributed_reptile.settings import ExecutionSettings
from distributed_reptile.tasks.source import TaskSource


class SerialBackend:
    """In-process execution: the reference the other backends must match bit for bit."""

    name = "serial"

    def __init__(self, settings: ExecutionSettings) -> None:
        self.settings = settings

    @property
    def num_workers(self) -> int:
        return 1

    def make_task_source(
        self, generator_cls: type, generator_params: dict[str, Any]
    ) -> TaskSourceHandle:
        return TaskSource(generator_cls, generator_params)

    def make_runner(self, learner_factory: LearnerFactory) -> Runner:
        return SerialRunner(learner_factory, task_retries=self.settings.task_retries)

    def close(self) -> None:
        pass
