"""The trainer's settings, declared once.

:class:`TrainerFields` declares every setting that reads the same in Python and in YAML (numbers,
flags, names, mappings), each with its one check. Two models extend it:

* :class:`TrainerSettings`: the constructor's arguments, where classes and schedules are Python
  objects. ``BaseMetaAlgorithm.__init__`` validates its arguments through it
  (:func:`validate_trainer_settings`).
* :class:`distributed_reptile.config.RunConfig`: the YAML schema, where the same object-valued
  settings are import paths (``"package.module:name"``).

The Tune search space accepts the names of :class:`TrainerSettings` (dotted into mappings), and
the execution backends read their part through :meth:`TrainerFields.execution`. The check
functions below are also what the runners call on their own arguments, so a value is checked by
one function wherever it enters.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)

from distributed_reptile.execution.registry import backend_names

#: Methods a learner class needs to stand in for an SB3 algorithm.
SB3_METHODS = ("learn", "predict", "set_env", "get_env", "set_random_seed", "save")


# ---------------------------------------------------------------------- checks (one per kind)
def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or a ValueError that names the setting."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_num_workers(value: Any) -> int | str:
    """``num_workers`` as an int >= 1 or ``"auto"`` (as many as the Ray cluster holds)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(
            f"num_workers must be a positive integer or 'auto' (one per CPU the cluster has), "
            f"got {value!r}."
        )
    return int(value)


def check_task_retries(task_retries: Any) -> int:
    """``task_retries`` as an int >= 0, or a ValueError that names the fix."""
    if isinstance(task_retries, bool) or not isinstance(task_retries, int) or task_retries < 0:
        raise ValueError(
            f"task_retries must be an integer >= 0 (0: no retry), got {task_retries!r}."
        )
    return task_retries


#: The named settings of ``tasks_per_call`` (besides an integer).
TASKS_PER_CALL_MODES = ("auto", "guided")


def check_tasks_per_call(tasks_per_call: Any) -> int | str:
    """``tasks_per_call`` as an int >= 1, ``"auto"`` or ``"guided"``, or a ValueError that names
    the fix."""
    if tasks_per_call in TASKS_PER_CALL_MODES:
        return str(tasks_per_call)
    if (
        isinstance(tasks_per_call, bool)
        or not isinstance(tasks_per_call, int)
        or tasks_per_call < 1
    ):
        raise ValueError(
            "tasks_per_call must be an integer >= 1 (tasks sent to a Ray worker in one call), "
            "'auto' (the batch split evenly over the workers) or 'guided' (calls that shrink as "
            f"the batch runs out), got {tasks_per_call!r}."
        )
    return tasks_per_call


def tasks_per_call_arg(text: str) -> int | str:
    """``tasks_per_call`` from a command-line word (an integer or a named setting), for
    ``argparse``'s ``type=``: a bad word is an ``ArgumentTypeError`` that names the fix."""
    value: int | str = text
    if text not in TASKS_PER_CALL_MODES:
        try:
            value = int(text)
        except ValueError:
            pass  # refused below, with the settings it takes
    try:
        return check_tasks_per_call(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_node_reduction(node_reduction: Any) -> bool | str:
    """``node_reduction`` as ``True``, ``False`` or ``"auto"``, or a ValueError that names the fix."""
    if node_reduction == "auto" or isinstance(node_reduction, bool):
        return node_reduction
    raise ValueError(
        "node_reduction must be true (the partial sums of a node's calls are combined on that "
        "node, then once more, before the driver receives one), false (the driver receives one "
        f"partial sum per call) or 'auto' (true when the workers sit on several nodes), got "
        f"{node_reduction!r}."
    )


def check_task_timeout(task_timeout_s: Any) -> float | None:
    """``task_timeout_s`` as a positive float or ``None``, or a ValueError that names the fix."""
    if task_timeout_s is None:
        return None
    if (
        isinstance(task_timeout_s, bool)
        or not isinstance(task_timeout_s, int | float)
        or task_timeout_s <= 0
    ):
        raise ValueError(
            "task_timeout_s must be a positive number of seconds, or None for no limit; "
            f"got {task_timeout_s!r}."
        )
    return float(task_timeout_s)


def check_backend(backend: Any) -> str:
    names = backend_names()
    if backend not in names:
        raise ValueError(f"backend must be one of {names}, got {backend!r}.")
    return str(backend)


def is_sb3_like(algo: Any) -> bool:
    """An SB3 algorithm class, or a class offering the SB3 methods the trainer calls."""
    if not inspect.isclass(algo):
        return False
    from stable_baselines3.common.base_class import BaseAlgorithm

    return issubclass(algo, BaseAlgorithm) or all(
        callable(getattr(algo, m, None)) for m in SB3_METHODS
    )


def check_rl_algorithm(algo: Any) -> Any:
    if not is_sb3_like(algo):
        raise TypeError(
            f"rl_algorithm must be an SB3 algorithm class such as stable_baselines3.PPO, got {algo!r}. "
            "Pass the class itself, not an instance or a name; a custom learner needs SB3's "
            f"methods {', '.join(SB3_METHODS)} and a `policy` torch module."
        )
    return algo


def check_generator_cls(cls: Any) -> Any:
    if not inspect.isclass(cls):
        raise TypeError(
            "tasks_generator_cls must be a class (e.g. distributed_reptile.TaskGenerator); its "
            "arguments go in tasks_generator_params."
        )
    return cls


def _dict_of(what: str, name: str) -> Callable[[Any], dict[str, Any]]:
    def check(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict of {what}.")
        return dict(value)

    return check


def check_meta_lr(meta_lr: Any) -> Any:
    from distributed_reptile.schedules import normalize_lr_schedule

    normalize_lr_schedule(meta_lr)
    return meta_lr


def _named(check: Callable[[Any, str], Any]) -> Callable[[Any, ValidationInfo], Any]:
    def run(value: Any, info: ValidationInfo) -> Any:
        return check(value, str(info.field_name))

    return run


PositiveInt = Annotated[int, BeforeValidator(_named(check_positive_int))]
NumWorkers = Annotated[int | Literal["auto"], BeforeValidator(check_num_workers)]
TaskRetries = Annotated[int, BeforeValidator(check_task_retries)]
TasksPerCall = Annotated[int | Literal["auto", "guided"], BeforeValidator(check_tasks_per_call)]
NodeReduction = Annotated[bool | Literal["auto"], BeforeValidator(check_node_reduction)]
TaskTimeout = Annotated[float | None, BeforeValidator(check_task_timeout)]
Backend = Annotated[str, BeforeValidator(check_backend)]
#: A mapping of keyword arguments; ``None`` reads as ``{}``.
Kwargs = Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)]
#: numpy integers read as ints; paths as strings.
Seed = Annotated[int | None, BeforeValidator(lambda v: int(v) if isinstance(v, np.integer) else v)]
OptionalPath = Annotated[
    str | None, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)
]


# ---------------------------------------------------------------------- the settings
class TrainerFields(BaseModel):
    """Settings that read the same in Python and YAML; see :class:`BaseMetaAlgorithm` for each."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    inner_steps: PositiveInt
    outer_steps: PositiveInt
    use_meta_optimizer: bool = False
    meta_optimizer_kwargs: Kwargs = Field(default_factory=dict)
    task_batch_size: PositiveInt = 1
    inner_loop_params: Kwargs = Field(default_factory=dict)
    ignored_layers: list[str] | None = None
    ignore_optimizer_params: bool = False
    verbose: int = Field(0, ge=0, le=2)
    tensorboard_logs: OptionalPath = None
    num_workers: NumWorkers = 1
    backend: Backend = "ray"
    seed: Seed = None
    ray_address: str | None = None
    worker_resources: Kwargs = Field(default_factory=dict)
    reuse_models: bool = True
    on_nonfinite: Literal["raise", "skip"] = "raise"
    max_worker_restarts: int = Field(3, ge=-1)
    max_task_retries: int = Field(3, ge=-1)
    task_retries: TaskRetries = 2
    task_timeout_s: TaskTimeout = None
    tasks_per_call: TasksPerCall = 1
    node_reduction: NodeReduction = "auto"
    connect_timeout_s: float | None = Field(30.0, gt=0)
    worker_start_timeout_s: float | None = Field(600.0, gt=0)
    ray_init_kwargs: Kwargs = Field(default_factory=dict)

    def execution(self) -> ExecutionSettings:
        """The part of the settings an execution backend reads."""
        return ExecutionSettings(
            **{name: getattr(self, name) for name in ExecutionSettings.__dataclass_fields__}
        )


class TrainerSettings(TrainerFields):
    """The trainer's arguments: :class:`TrainerFields` plus the object-valued settings.

    :param tasks_generator_cls: task generator class (:class:`TaskGenerator` or your own with
        ``get_task(meta_step, seed=None) -> (env, info, origin_meta_step)`` and ``reset_history()``).
    :param tasks_generator_params: its keyword arguments. For ``TaskGenerator`` without a
        ``generator_seed``, one is derived from ``seed``.
    :param rl_algorithm: SB3 algorithm class (``PPO``, ``A2C``, ``SAC``, ``TD3``, ``DQN``, ``sb3_contrib.TRPO``...).
    :param rl_algo_kwargs: its keyword arguments, ``policy`` included (default ``"MlpPolicy"``).
    :param inner_steps: env steps of each task's inner loop.
    :param outer_steps: number of meta-updates (outer steps) of a ``learn`` call.
    :param meta_lr: meta step size: a float or ``(step, total_steps) -> lr``
        (``total_steps = max(outer_steps - 1, 1)``); see :func:`linear_schedule`.
    :param use_meta_optimizer: apply the meta step through an optimizer (gradient ``-(mean delta)``).
    :param meta_optimizer_cls: that optimizer's class (default Adam).
    :param meta_optimizer_kwargs: its keyword arguments (``lr`` comes from ``meta_lr``).
    :param task_batch_size: tasks per outer step.
    :param inner_loop_params: extra keyword arguments of the inner ``learn`` call.
    :param ignored_layers: parameter-name prefixes left out of the meta-update.
    :param ignore_optimizer_params: keep ignored parameters out of the meta-optimizer too.
    :param verbose: 0 silent, 1 start-up summary and per-step lines.
    :param device: device of the meta model (task models use ``rl_algo_kwargs['device']`` or "auto").
    :param tensorboard_logs: folder of outer-loop TensorBoard logs (``None``: none are written).
    :param num_workers: Ray actors running inner loops (``backend="ray"``); ``"auto"``: as many
        as the Ray cluster's CPUs hold at start (``worker_resources`` each).
    :param backend: execution backend (:mod:`distributed_reptile.execution`): ``"ray"`` (actors;
        Ray is started on 127.0.0.1 when no cluster is given) or ``"serial"`` (same inner-loop
        code, in this process).
    :param seed: run seed. Per-task seeds derive from (seed, meta step), never from the worker, so
        the meta weights do not depend on the backend or the number of workers. ``None`` draws one.
    :param ray_address: Ray cluster to join (else ``RAY_ADDRESS``, as set by ``ray job submit``).
    :param worker_resources: Ray resources of each worker actor, e.g. ``{"num_cpus": 1, "num_gpus": 0.25}``.
    :param reuse_models: reuse one SB3 model per worker across tasks (exactly equivalent, faster).
    :param on_nonfinite: what to do with an adapted weight that is NaN/inf: ``"raise"`` or ``"skip"`` the task.
    :param max_worker_restarts: restarts of a Ray worker that died.
    :param max_task_retries: Ray's retries of a task whose worker died (a worker Ray gives up on
        is replaced by a new one).
    :param task_retries: reruns of a task whose inner loop raised, before the run fails with an
        error naming the task and the original exception.
    :param task_timeout_s: a task running longer is cancelled (its worker replaced) and rerun
        (``None``: no limit; Ray backend only).
    :param tasks_per_call: tasks sent to a Ray worker in one actor call: ``1`` (default) balances
        the load best; more (or ``"auto"``: the batch split evenly over the workers) saves Ray's
        per-call cost when inner loops take only milliseconds; ``"guided"``: calls that shrink as
        the batch runs out, scaled by each worker's measured speed (few calls, and a slow worker
        holds a small part of the step; see :mod:`distributed_reptile.runners.chunking`). The
        meta weights do not depend on it.
    :param node_reduction: with an algorithm whose ``combine`` is ``"sum"`` (Reptile), combine the
        partial sums of a node's actor calls on that node, and the nodes' sums on one worker, so
        the driver receives one int64 sum (8 bytes per parameter) per outer step instead of one
        per call: ``True``, ``False`` or ``"auto"`` (default: on when the Ray workers sit on more
        than one node and the sums kept from the driver reach 32 MiB per outer step). Costs one
        or two more actor calls at the end of each outer step. The meta weights do not depend
        on it.
    :param connect_timeout_s: time allowed to reach ``ray_address`` before failing (``None``: Ray's own).
    :param worker_start_timeout_s: how long the workers may stay pending (no node can place them
        yet, e.g. a cluster still scaling up) before the run fails with what is missing; a line
        says what is pending every 15 s meanwhile (``None``: wait as long as it takes).
    :param ray_init_kwargs: extra keyword arguments of ``ray.init``.
    :param inner_learner_cls: class running each inner loop (subclass :class:`InnerLearner` to
        change how a task is adapted).
    """

    tasks_generator_cls: Annotated[Any, BeforeValidator(check_generator_cls)]
    tasks_generator_params: Annotated[
        dict[str, Any],
        BeforeValidator(
            _dict_of("the task generator's keyword arguments", "tasks_generator_params")
        ),
    ] = Field(default_factory=dict)
    rl_algorithm: Annotated[Any, BeforeValidator(check_rl_algorithm)]
    rl_algo_kwargs: Annotated[
        dict[str, Any],
        BeforeValidator(_dict_of("the SB3 algorithm's keyword arguments", "rl_algo_kwargs")),
    ]
    meta_lr: Annotated[Any, BeforeValidator(check_meta_lr)]
    meta_optimizer_cls: Any = None
    device: Any = "auto"
    inner_learner_cls: Any = None


@dataclass(frozen=True)
class ExecutionSettings:
    """What an execution backend needs to know (the Ray ones are ignored by the serial backend)."""

    num_workers: int | str = 1
    ray_address: str | None = None
    worker_resources: dict[str, Any] = field(default_factory=dict)
    max_worker_restarts: int = 3
    max_task_retries: int = 3
    task_retries: int = 2
    task_timeout_s: float | None = None
    tasks_per_call: int | str = 1
    node_reduction: bool | str = "auto"
    connect_timeout_s: float | None = 30.0
    worker_start_timeout_s: float | None = 600.0
    ray_init_kwargs: dict[str, Any] = field(default_factory=dict)


def validate_trainer_settings(kwargs: dict[str, Any]) -> TrainerSettings:
    """The constructor's arguments checked; a ``ValueError`` naming each bad one otherwise
    (a ``TypeError`` for a value of the wrong kind, such as an instance where a class belongs)."""
    try:
        return TrainerSettings.model_validate(kwargs)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            msg = str(e["msg"]).removeprefix("Value error, ")
            name = ".".join(str(p) for p in e["loc"])
            problems.append(
                msg if msg.startswith(name) else f"{name}: {msg} (got {e.get('input')!r})"
            )
        raise ValueError(" ".join(problems)) from None


def tunable_settings() -> list[str]:
    """Names a Tune search space may set (dotted keys go into mapping-valued settings)."""
    return sorted(TrainerSettings.model_fields)


__all__ = [
    "SB3_METHODS",
    "ExecutionSettings",
    "TrainerFields",
    "TrainerSettings",
    "check_node_reduction",
    "check_num_workers",
    "check_positive_int",
    "check_task_retries",
    "check_task_timeout",
    "check_tasks_per_call",
    "tasks_per_call_arg",
    "is_sb3_like",
    "tunable_settings",
    "validate_trainer_settings",
]
