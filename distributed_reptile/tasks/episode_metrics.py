"""Metrics of an episode besides its return, declared by a task family: Meta-World's success flag,
HalfCheetah's velocity error.

A family wraps its env in :class:`EpisodeMetrics`; at the episode's last step (terminated or
truncated) the wrapper puts ``info["episode_metrics"] = {name: value}``, which the evaluation
collects next to the return (:meth:`~distributed_reptile.inner.InnerLearner.evaluate`) and reports
with intervals and paired differences like the return. Observations, rewards and dynamics are
untouched, so wrapping changes no training run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym

#: Key of the metrics in the last step's ``info``.
INFO_KEY = "episode_metrics"


@dataclass(frozen=True)
class Metric:
    """One episode metric: a value read from each step's ``info``, reduced over the episode.

    :param step_value: the step's value, from its ``info``.
    :param reduce: ``"max"`` (e.g. success: solved at any step) or ``"mean"``.
    :param higher_is_better: for reports (a success rate: yes; an error: no).
    :param description: what the episode's value is, for reports (units included).
    """

    step_value: Callable[[Mapping[str, Any]], float]
    reduce: Literal["max", "mean"] = "mean"
    higher_is_better: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not callable(self.step_value):
            raise TypeError(
                f"Metric.step_value must be a function of a step's info dict, got {self.step_value!r}."
            )
        if self.reduce not in ("max", "mean"):
            raise ValueError(
                f'Metric.reduce must be "max" (e.g. solved at any step) or "mean", got {self.reduce!r}.'
            )

    def describe(self) -> dict[str, Any]:
        """The metric's report fields: ``higher_is_better``, ``reduce`` and ``description``."""
        return {
            "higher_is_better": bool(self.higher_is_better),
            "reduce": self.reduce,
            "description": self.description,
        }


class EpisodeMetrics(gym.Wrapper):
    """Adds ``info["episode_metrics"]`` at the last step of each episode.

    :param env: the task's env (wrap outside its ``TimeLimit``, so truncation is seen).
    :param metrics: name -> :class:`Metric`.
    """

    def __init__(self, env: gym.Env, metrics: Mapping[str, Metric]) -> None:
        super().__init__(env)
        self.metrics = dict(metrics)
        for name, metric in self.metrics.items():
            if not isinstance(name, str) or not name or not isinstance(metric, Metric):
                raise TypeError(
                    "EpisodeMetrics takes {name: Metric(step_value, reduce, higher_is_better)} "
                    f"with non-empty string names, got {name!r}: {metric!r}."
                )
        self._values: dict[str, list[float]] = {name: [] for name in self.metrics}

    @property
    def _max_episode_steps(self) -> Any:
        """The wrapped ``TimeLimit``'s episode length (gymnasium's wrappers do not forward private
        attributes, and code that reads a family's horizon from it keeps working)."""
        return getattr(self.env, "_max_episode_steps", None)

    def reset(self, **kwargs: Any) -> Any:
        self._values = {name: [] for name in self.metrics}
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        for name, metric in self.metrics.items():
            self._values[name].append(float(metric.step_value(info)))
        if terminated or truncated:
            info = dict(info)
            info[INFO_KEY] = {name: self._episode_value(name) for name in self.metrics}
        return obs, reward, terminated, truncated, info

    def _episode_value(self, name: str) -> float:
        values = self._values[name]
        if not values:
            return float("nan")
        if self.metrics[name].reduce == "max":
            return max(values)
        return sum(values) / len(values)


def metrics_of(env: gym.Env) -> dict[str, Metric]:
    """The metrics an env declares (its :class:`EpisodeMetrics` wrappers), by name."""
    found: dict[str, Metric] = {}
    current: Any = env
    while current is not None:
        if isinstance(current, EpisodeMetrics):
            found.update(current.metrics)
        current = getattr(current, "env", None)
    return found


def _success(info: Mapping[str, Any]) -> float:
    return float(info.get("success", 0.0))


def _velocity_error(info: Mapping[str, Any]) -> float:
    return -float(info["reward_forward"])  # reward_forward = -|x_velocity - target_velocity|


#: Meta-World: whether the task was solved at any step of the episode (Meta-World's own flag).
SUCCESS = Metric(
    _success,
    reduce="max",
    description="1 if Meta-World's success flag was set at any step of the episode, else 0 "
    "(the mean is the fraction of episodes solved)",
)
#: HalfCheetah velocity: mean absolute difference between forward and target velocity (m/s).
VELOCITY_ERROR = Metric(
    _velocity_error,
    reduce="mean",
    higher_is_better=False,
    description="mean |forward velocity - target velocity| over the episode's steps (m/s)",
)

__all__ = ["INFO_KEY", "SUCCESS", "VELOCITY_ERROR", "EpisodeMetrics", "Metric", "metrics_of"]
