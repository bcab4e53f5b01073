"""distributed_reptile: Reptile meta-learning for Stable-Baselines3, with inner loops on Ray."""

from distributed_reptile.algorithms import (
    BaseMetaAlgorithm,
    FirstOrderMetaAlgorithm,
    NonFiniteWeightsError,
    ReptileMetaRL,
    WeightSum,
    load_trainer,
)
from distributed_reptile.budget import compute_updates
from distributed_reptile.callbacks import (
    CallbackList,
    CheckpointCallback,
    MetaCallback,
    StopOnStepRecord,
    StopOnWallClock,
)
from distributed_reptile.checkpoint import CheckpointError
from distributed_reptile.errors import RunInterruptedError
from distributed_reptile.inner import AdaptedResult, InnerLearner, TaskJob
from distributed_reptile.records import StepRecord
from distributed_reptile.runners import TaskFailedError
from distributed_reptile.schedules import (
    ConstantSchedule,
    LinearSchedule,
    constant_schedule,
    linear_schedule,
)
from distributed_reptile.tasks import ListTask, TaskGenerator, TaskSpec

__version__ = "0.1.0"

__all__ = [
    "AdaptedResult",
    "CallbackList",
    "CheckpointCallback",
    "MetaCallback",
    "StopOnStepRecord",
    "StopOnWallClock",
    "BaseMetaAlgorithm",
    "CheckpointError",
    "ConstantSchedule",
    "FirstOrderMetaAlgorithm",
    "InnerLearner",
    "LinearSchedule",
    "ListTask",
    "NonFiniteWeightsError",
    "ReptileMetaRL",
    "RunInterruptedError",
    "StepRecord",
    "TaskFailedError",
    "TaskGenerator",
    "TaskJob",
    "TaskSpec",
    "WeightSum",
    "compute_updates",
    "constant_schedule",
    "linear_schedule",
    "load_trainer",
]
