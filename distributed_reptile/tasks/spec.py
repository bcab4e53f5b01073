"""TaskSpec: the small, picklable description of a task that crosses process boundaries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from distributed_reptile.jsonutil import to_jsonable

TaskCallable = Callable[..., tuple[gym.Env, dict[str, Any]]]


@dataclass
class TaskSpec:
    """What a worker needs to build the env of one task.

    :param meta_step: global index of the task in the run (``outer_step * task_batch_size + i``).
    :param info: task metadata returned by the task callable or generator.
    :param origin_meta_step: meta step at which this task first appeared (``None`` for static lists).
    :param random_seed: seed passed to ``task_callable(random_seed=...)`` (callable mode).
    :param task_callable: builds ``(env, info)`` from a seed (callable mode).
    :param task_callable_params: extra keyword arguments of ``task_callable``.
    :param env: a ready env object (static lists and user generators that return envs).
    :param revisit: whether this task is a revisit of an earlier one.
    """

    meta_step: int
    info: dict[str, Any] = field(default_factory=dict)
    origin_meta_step: int | None = None
    random_seed: int | None = None
    task_callable: TaskCallable | None = None
    task_callable_params: dict[str, Any] = field(default_factory=dict)
    env: Any = None
    revisit: bool = False

    def build_env(self) -> gym.Env:
        """The task's env: the shipped env object, or a fresh one from the callable."""
        if self.env is not None:
            return self.env
        if self.task_callable is None:
            raise ValueError(
                f"TaskSpec for meta step {self.meta_step} has neither an env nor a task_callable."
            )
        out = self.task_callable(random_seed=self.random_seed, **self.task_callable_params)
        env, _ = check_task_pair(out, where="task_callable")
        return env

    def describe(self) -> dict[str, Any]:
        """A short, JSON-friendly summary for logs and step records."""
        return {
            "meta_step": self.meta_step,
            "origin_meta_step": self.origin_meta_step,
            "random_seed": self.random_seed,
            "revisit": self.revisit,
            "info": to_jsonable(self.info),
        }


def check_task_pair(out: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """Validate an ``(env, info)`` pair returned by user code."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{where} must return a tuple (env, info), got {type(out).__name__}"
            f"{' of length ' + str(len(out)) if isinstance(out, tuple) else ''}. "
            "Return `env, {}` when there is no task metadata."
        )
    env, info = out
    _check_env(env, where)
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise TypeError(
            f"{where} must return (env, info) with info a dict, got {type(info).__name__}."
        )
    return env, info


def check_task_triple(out: Any, where: str) -> tuple[Any, dict[str, Any], int | None]:
    """Validate the ``(env, info, origin_meta_step)`` triple of a ``get_task`` call."""
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError(
            f"{where} must return a tuple (env, info, origin_meta_step), got {type(out).__name__}"
            f"{' of length ' + str(len(out)) if isinstance(out, tuple) else ''}. "
            "See the custom task-generator guide in the README."
        )
    env, info, origin = out
    _check_env(env, where)
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise TypeError(f"{where} must return info as a dict, got {type(info).__name__}.")
    if origin is not None and not isinstance(origin, int):
        raise TypeError(
            f"{where} must return origin_meta_step as an int or None, got {type(origin).__name__}."
        )
    return env, info, origin


def _check_env(env: Any, where: str) -> None:
    if not (hasattr(env, "reset") and hasattr(env, "step") and hasattr(env, "observation_space")):
        raise TypeError(
            f"{where} returned {type(env).__name__} where a gymnasium.Env was expected "
            "(an object with reset, step, observation_space and action_space)."
        )
