"""HalfCheetah target-velocity and direction families (the MAML paper's locomotion tasks).

Both need MuJoCo (``pip install "distributed-reptile[mujoco]"``); it is imported only when a task
is built, so importing this module works without it.

* :func:`make_halfcheetah_vel_task`: HalfCheetah-v5 rewarded by
  ``-|forward_velocity - target_velocity| - 0.05 ||a||^2``. Train/test disjointness: the
  ``"train"`` split draws ``target_velocity`` from ``[0.0, 1.5]``, the held-out ``"test"`` split
  from ``[1.6, 2.0]`` (together inside MAML's ``[0, 2]``); the intervals do not meet, so no train
  task equals a test task: held-out tasks are faster.
* :func:`make_halfcheetah_dir_task`: HalfCheetah-v5 rewarded by
  ``direction * forward_velocity - 0.05 ||a||^2`` with ``direction`` in ``{-1, +1}``.
  **This family has only two tasks, so it has no disjoint held-out split**: ``"test"`` draws from
  the same two directions as ``"train"`` (:data:`DIR_SPLITS_DISJOINT` is ``False``). Evaluate its
  adaptation on both directions, or use the velocity family for held-out tasks. ``"train"`` draws
  the direction at random; ``"test"`` alternates it with the seed (even: backward, odd: forward),
  so the held-out tasks of :func:`~distributed_reptile.tasks.families.held_out_tasks` (consecutive
  seeds) are balanced: ``n`` of them hold ``n // 2`` of one direction and the rest of the other.

Episodes last 200 steps (MAML's horizon for these tasks). The velocity family's episodes also
report ``velocity_error``, the mean ``|forward_velocity - target_velocity|`` (m/s), which the
evaluation reports next to the return.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from distributed_reptile.tasks.episode_metrics import VELOCITY_ERROR, EpisodeMetrics
from distributed_reptile.tasks.families._common import (
    Ranges,
    check_split,
    mujoco_import_error,
    sample_uniform,
)

#: Training range of the target velocity: ``(low, high)``, m/s.
VEL_TRAIN_RANGES: Ranges = {"target_velocity": (0.0, 1.5)}
#: Held-out range of the target velocity, disjoint from training (faster).
VEL_TEST_RANGES: Ranges = {"target_velocity": (1.6, 2.0)}
#: The parameter whose train and test intervals are disjoint.
VEL_DISJOINT_ON = "target_velocity"

#: Directions of each split (the same: a two-task family cannot have a disjoint split).
DIR_TRAIN_VALUES: dict[str, tuple[int, ...]] = {"direction": (-1, 1)}
DIR_TEST_VALUES: dict[str, tuple[int, ...]] = {"direction": (-1, 1)}
#: Whether the direction family's train and test splits are disjoint (they cannot be).
DIR_SPLITS_DISJOINT = False

#: Aliases following the other families' naming (velocity family).
TRAIN_RANGES = VEL_TRAIN_RANGES
TEST_RANGES = VEL_TEST_RANGES

#: Episode length of both families.
MAX_EPISODE_STEPS = 200


def _envs() -> Any:
    """The module holding the env classes (imports MuJoCo, with a clear error without it)."""
    try:
        from distributed_reptile.tasks.families import _mujoco_envs
    except ImportError as exc:
        if "distributed-reptile[mujoco]" in str(exc):
            raise
        raise mujoco_import_error("The HalfCheetah task families", exc=exc) from exc
    return _mujoco_envs


def make_halfcheetah_vel_task(
    random_seed: int, split: str = "train", max_episode_steps: int = MAX_EPISODE_STEPS
) -> tuple[gym.Env, dict[str, Any]]:
    """A HalfCheetah target-velocity task drawn from ``split`` with ``random_seed``.

    The same ``(random_seed, split)`` always gives the same target velocity.
    """
    ranges = VEL_TRAIN_RANGES if check_split(split) == "train" else VEL_TEST_RANGES
    params = sample_uniform(np.random.default_rng(random_seed), ranges)
    env = EpisodeMetrics(
        gym.wrappers.TimeLimit(
            _envs().HalfCheetahVelEnv(**params), max_episode_steps=max_episode_steps
        ),
        {"velocity_error": VELOCITY_ERROR},
    )
    return env, {"family": "halfcheetah_vel", "split": split, **params}


def make_halfcheetah_dir_task(
    random_seed: int, split: str = "train", max_episode_steps: int = MAX_EPISODE_STEPS
) -> tuple[gym.Env, dict[str, Any]]:
    """A HalfCheetah direction task (forward or backward).

    ``"train"`` draws the direction at random (each with probability 1/2); ``"test"`` takes
    ``(-1, +1)[random_seed % 2]``, so consecutive held-out seeds alternate and an evaluation on
    ``n`` of them weighs both directions equally (a random draw of 20 can give 15 and 5). Both
    splits hold the same two directions: see :data:`DIR_SPLITS_DISJOINT`.
    """
    if check_split(split) == "train":
        choices = DIR_TRAIN_VALUES["direction"]
        index = int(np.random.default_rng(random_seed).integers(len(choices)))
    else:
        choices = DIR_TEST_VALUES["direction"]
        index = int(random_seed) % len(choices)
    direction = int(choices[index])
    env = gym.wrappers.TimeLimit(
        _envs().HalfCheetahDirEnv(direction=direction), max_episode_steps=max_episode_steps
    )
    return env, {"family": "halfcheetah_dir", "split": split, "direction": direction}
