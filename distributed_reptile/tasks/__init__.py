"""Tasks: generators, specs, and the source the trainer draws them from."""

from distributed_reptile.tasks.generator import ListTask, TaskGenerator
from distributed_reptile.tasks.source import TaskSource
from distributed_reptile.tasks.spec import TaskSpec

__all__ = ["ListTask", "TaskGenerator", "TaskSource", "TaskSpec"]
