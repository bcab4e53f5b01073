"""2D point navigation to a hidden goal (the MAML paper's task).

The agent is a point in the plane. It starts at the origin, observes only its own position, and
moves by its action, clipped to ``[-0.1, 0.1]`` per axis. The reward after each move is minus the
Euclidean distance to the goal. The goal is never observed: each task is one goal, and a policy
has to find it from the rewards. Episodes are truncated after 100 steps (a ``TimeLimit``); there
is no termination.

Goals lie in the square ``[-0.5, 0.5)^2``.

Train/test disjointness (geometric, hash-free): the square is cut into a 4 x 4 grid of cells of
side 0.25, cell ``(i, j)`` holding the goals with ``floor((x + 0.5) / 0.25) == i`` and
``floor((y + 0.5) / 0.25) == j``. Four of the sixteen cells, :data:`TEST_CELLS` (one in each row
and each column, in a pinwheel around the origin), are the held-out ``"test"`` region; the other
twelve are the ``"train"`` region. A goal's split is a function of the goal alone
(:func:`goal_split`), and each split samples by rejection (uniform in the square, keep the goal if
``goal_split(goal)`` is the requested split), so every train goal is outside the test region and
vice versa, exactly, floating point included. The test region covers a quarter of the square,
spread over all four quadrants and both near and far from the start.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from distributed_reptile.tasks.families._common import check_split

#: Goals are drawn in ``[GOAL_LOW, GOAL_HIGH)`` on each axis.
GOAL_LOW, GOAL_HIGH = -0.5, 0.5
#: Largest move per axis and step; actions are clipped to ``[-MAX_STEP, MAX_STEP]``.
MAX_STEP = 0.1
#: Episode length.
MAX_EPISODE_STEPS = 100
#: Side of a grid cell; the square is ``GRID_SIZE`` x ``GRID_SIZE`` cells.
CELL_SIZE = 0.25
GRID_SIZE = 4
#: Cells ``(i, j)`` (x index, y index) of the held-out test region.
TEST_CELLS: frozenset[tuple[int, int]] = frozenset({(1, 0), (3, 1), (0, 2), (2, 3)})
#: Goal region of each split: the square ``goal`` (per axis) restricted to the grid ``cells``
#: listed (see :func:`cell_bounds` for a cell's half-open ``[x_low, x_high) x [y_low, y_high)``).
TRAIN_RANGES: dict[str, Any] = {
    "goal": (GOAL_LOW, GOAL_HIGH),
    "cells": tuple(
        sorted(
            (i, j) for i in range(GRID_SIZE) for j in range(GRID_SIZE) if (i, j) not in TEST_CELLS
        )
    ),
}
TEST_RANGES: dict[str, Any] = {"goal": (GOAL_LOW, GOAL_HIGH), "cells": tuple(sorted(TEST_CELLS))}
#: Goal used by ``gymnasium.make("distributed_reptile/PointNav-v0")`` without kwargs (a train goal).
DEFAULT_GOAL = (0.3, 0.3)


def cell_bounds(cell: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(x_low, x_high, y_low, y_high)`` of grid cell ``(i, j)`` (half-open on the high side)."""
    i, j = cell
    return (
        GOAL_LOW + i * CELL_SIZE,
        GOAL_LOW + (i + 1) * CELL_SIZE,
        GOAL_LOW + j * CELL_SIZE,
        GOAL_LOW + (j + 1) * CELL_SIZE,
    )


def goal_cell(goal: Any) -> tuple[int, int]:
    """Grid cell ``(i, j)`` of a goal in ``[-0.5, 0.5)^2``."""
    x, y = (float(v) for v in np.asarray(goal, dtype=np.float64).reshape(2))
    if not (GOAL_LOW <= x < GOAL_HIGH and GOAL_LOW <= y < GOAL_HIGH):
        raise ValueError(f"goal {goal!r} is outside [{GOAL_LOW}, {GOAL_HIGH})^2.")
    i = min(int(np.floor((x - GOAL_LOW) / CELL_SIZE)), GRID_SIZE - 1)
    j = min(int(np.floor((y - GOAL_LOW) / CELL_SIZE)), GRID_SIZE - 1)
    return i, j


def goal_split(goal: Any) -> str:
    """``"test"`` if ``goal`` lies in the held-out region, else ``"train"``."""
    return "test" if goal_cell(goal) in TEST_CELLS else "train"


def sample_goal(rng: np.random.Generator, split: str = "train") -> tuple[float, float]:
    """A goal uniform over ``split``'s region (rejection sampling on :func:`goal_split`)."""
    check_split(split)
    while True:
        goal = rng.uniform(GOAL_LOW, GOAL_HIGH, size=2)
        if goal[0] < GOAL_HIGH and goal[1] < GOAL_HIGH and goal_split(goal) == split:
            return float(goal[0]), float(goal[1])


class PointNavEnv(gym.Env):
    """A point that moves in the plane towards a hidden goal.

    * observation: the position, ``Box(-inf, inf, (2,), float32)``; the goal is not observed;
    * action: the move, ``Box(-0.1, 0.1, (2,), float32)``; larger moves are clipped to it;
    * reward: ``-||position_after_move - goal||_2``;
    * start: the origin, every episode (``reset(seed=...)`` only seeds ``np_random``);
    * never terminates; wrap in a ``TimeLimit`` for the 100-step horizon
      (:func:`make_pointnav_task` and ``gymnasium.make`` do).

    :param goal: the hidden goal ``(x, y)``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, goal: Any = DEFAULT_GOAL, render_mode: str | None = None) -> None:
        super().__init__()
        goal_arr = np.asarray(goal, dtype=np.float64).reshape(-1)
        if goal_arr.shape != (2,) or not np.isfinite(goal_arr).all():
            raise ValueError(f"goal must be two finite numbers (x, y), got {goal!r}.")
        self.goal = goal_arr
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_STEP, MAX_STEP, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2, dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._position = np.zeros(2, dtype=np.float64)
        return self._obs(), {"distance": self._distance()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        move = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -MAX_STEP, MAX_STEP)
        self._position = self._position + move
        distance = self._distance()
        return self._obs(), -distance, False, False, {"distance": distance}

    def _obs(self) -> np.ndarray:
        return self._position.astype(np.float32)

    def _distance(self) -> float:
        return float(np.linalg.norm(self._position - self.goal))


def make_pointnav_task(
    random_seed: int, split: str = "train", max_episode_steps: int = MAX_EPISODE_STEPS
) -> tuple[gym.Env, dict[str, Any]]:
    """A point-navigation task whose goal is drawn from ``split``'s region with ``random_seed``.

    The same ``(random_seed, split)`` always gives the same goal.
    """
    goal = sample_goal(np.random.default_rng(random_seed), split)
    env = gym.wrappers.TimeLimit(PointNavEnv(goal=goal), max_episode_steps=max_episode_steps)
    return env, {"family": "pointnav", "split": split, "goal": list(goal), "cell": goal_cell(goal)}
