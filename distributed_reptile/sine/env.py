"""The sine-wave regression tasks of the Reptile paper (Figure 1), as gymnasium envs.

A task is ``y = a sin(x + b)`` with ``a ~ U[0.1, 5]`` and ``b ~ U[0, 2 pi]``; inputs are drawn
from ``U[-5, 5]``. The env serves two purposes:

* training data for a supervised learner: :meth:`SineTaskEnv.training_batch` draws fresh points
  (``"train"`` tasks) or returns the task's fixed support set (``"test"`` tasks: one set of 10
  points, the few-shot protocol);
* an evaluation episode for :func:`stable_baselines3.common.evaluation.evaluate_policy`: an
  episode walks the dense grid of 50 points over ``[-5, 5]``; the observation is ``x``, the
  action is the prediction, the reward is ``-(prediction - y)^2``. The episode return is minus
  the sum of squared errors, so the grid MSE is ``-return / 50``.

``"train"`` and ``"test"`` tasks come from the same distribution; a test task's parameters and
support set are drawn from a separate random stream of its seed.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from distributed_reptile.tasks.families._common import check_split

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, 2.0 * np.pi)
X_RANGE = (-5.0, 5.0)
#: Points of the evaluation grid (an evaluation episode's length).
GRID_POINTS = 50
#: Points of a test task's fixed support set.
SUPPORT_SIZE = 10
_TEST_STREAM = 0x7E57
# Shared by every task (read-only); each env gets shallow copies of the spaces (a Box costs
# ~15 us to build, a copy ~2 us, and tasks are built by the thousand).
_GRID = np.linspace(X_RANGE[0], X_RANGE[1], GRID_POINTS, dtype=np.float32).reshape(-1, 1)
_GRID.setflags(write=False)
_OBS_SPACE = spaces.Box(X_RANGE[0], X_RANGE[1], shape=(1,), dtype=np.float32)
_ACT_SPACE = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
for _space in (_OBS_SPACE, _ACT_SPACE):  # the copies share these arrays: no edits in place
    for _bounds in (_space.low, _space.high, _space.bounded_below, _space.bounded_above):
        _bounds.setflags(write=False)


class SineTaskEnv(gym.Env):
    """One sine-wave regression task.

    :param amplitude: ``a``.
    :param phase: ``b``.
    :param support_x: the fixed support set's inputs (``None``: fresh points for every batch).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, amplitude: float, phase: float, support_x: np.ndarray | None = None) -> None:
        super().__init__()
        self.amplitude = float(amplitude)
        self.phase = float(phase)
        self.support_x = (
            None if support_x is None else np.asarray(support_x, dtype=np.float32).reshape(-1, 1)
        )
        self.grid = _GRID
        self.observation_space = copy.copy(_OBS_SPACE)
        self.action_space = copy.copy(_ACT_SPACE)
        self._i = 0

    def function(self, x: np.ndarray) -> np.ndarray:
        """``a sin(x + b)``."""
        return (self.amplitude * np.sin(np.asarray(x, dtype=np.float32) + self.phase)).astype(
            np.float32
        )

    def training_batch(
        self, rng: np.random.Generator, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of shape ``(n, 1)``: fresh uniform points, or the fixed support set (a random
        subset of it when ``batch_size`` is smaller)."""
        if self.support_x is None:
            x = rng.uniform(X_RANGE[0], X_RANGE[1], size=(batch_size, 1)).astype(np.float32)
        elif batch_size >= len(self.support_x):
            x = self.support_x
        else:
            x = self.support_x[rng.choice(len(self.support_x), size=batch_size, replace=False)]
        return x, self.function(x)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._i = 0
        return self.grid[0].copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        x = self.grid[self._i]
        error = float(np.asarray(action, dtype=np.float64).reshape(-1)[0]) - float(
            self.function(x)[0]
        )
        self._i += 1
        done = self._i >= GRID_POINTS
        obs = self.grid[min(self._i, GRID_POINTS - 1)].copy()
        return obs, -error * error, done, False, {}


def make_sine_task(random_seed: int, split: str = "train") -> tuple[SineTaskEnv, dict[str, Any]]:
    """A sine task drawn with ``random_seed``; ``"test"`` tasks carry a fixed 10-point support set."""
    check_split(split)
    if split == "train":
        rng = np.random.default_rng(random_seed)
    else:
        rng = np.random.default_rng([int(random_seed), _TEST_STREAM])
    amplitude = float(rng.uniform(*AMPLITUDE_RANGE))
    phase = float(rng.uniform(*PHASE_RANGE))
    support = rng.uniform(X_RANGE[0], X_RANGE[1], size=SUPPORT_SIZE) if split == "test" else None
    env = SineTaskEnv(amplitude, phase, support)
    return env, {"family": "sine", "split": split, "amplitude": amplitude, "phase": phase}
