"""CartPole with random physics: pole half-length, pole mass and gravity.

Each task is gymnasium's CartPole-v1 with three physical parameters drawn uniformly:

* ``length``: the pole's *half*-length (gymnasium's ``CartPoleEnv.length``; the full pole is
  twice as long), in metres;
* ``masspole``: the pole's mass, in kg;
* ``gravity``: in m/s^2.

The derived quantities the dynamics use, ``total_mass = masspole + masscart`` and
``polemass_length = masspole * length``, are recomputed from them.

Train/test disjointness: the held-out ``"test"`` split draws ``length`` from ``[0.8, 1.0]``, the
``"train"`` split from ``[0.25, 0.75]``. The two intervals do not meet (a 0.05 gap), so no train
task can equal a test task whatever the other two parameters are: held-out tasks have longer poles.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from distributed_reptile.tasks.families._common import Ranges, check_split, sample_uniform

#: Training range of each parameter: ``(low, high)``.
TRAIN_RANGES: Ranges = {
    "length": (0.25, 0.75),
    "masspole": (0.05, 0.2),
    "gravity": (7.0, 12.0),
}
#: Held-out range, disjoint from training on pole length (longer poles).
TEST_RANGES: Ranges = {
    "length": (0.8, 1.0),
    "masspole": (0.05, 0.2),
    "gravity": (7.0, 12.0),
}
#: The parameter whose train and test intervals are disjoint.
DISJOINT_ON = "length"
#: Default episode length (CartPole-v1's).
MAX_EPISODE_STEPS = 500


class CartPolePhysicsEnv(CartPoleEnv):
    """CartPole-v1 whose physics come from the constructor, with derived quantities kept consistent.

    :param length: pole half-length (gymnasium's ``length``), in metres.
    :param masspole: pole mass, in kg.
    :param gravity: gravitational acceleration, in m/s^2.
    :param render_mode: passed to :class:`CartPoleEnv`.
    """

    def __init__(
        self,
        length: float = 0.5,
        masspole: float = 0.1,
        gravity: float = 9.8,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        if length <= 0 or masspole <= 0 or gravity <= 0:
            raise ValueError(
                f"length, masspole and gravity must be positive, got {length}, {masspole}, {gravity}."
            )
        self.length = float(length)
        self.masspole = float(masspole)
        self.gravity = float(gravity)
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length


def sample_params(rng: np.random.Generator, split: str = "train") -> dict[str, float]:
    """Draw ``length``, ``masspole`` and ``gravity`` from ``split``'s ranges."""
    ranges = TRAIN_RANGES if check_split(split) == "train" else TEST_RANGES
    return sample_uniform(rng, ranges)


def make_cartpole_task(
    random_seed: int, split: str = "train", max_episode_steps: int = MAX_EPISODE_STEPS
) -> tuple[gym.Env, dict[str, Any]]:
    """A CartPole task drawn from ``split`` ("train" or "test") with ``random_seed``.

    The same ``(random_seed, split)`` always gives the same physics.
    """
    params = sample_params(np.random.default_rng(random_seed), split)
    core = CartPolePhysicsEnv(
        length=params["length"], masspole=params["masspole"], gravity=params["gravity"]
    )
    env = gym.wrappers.TimeLimit(core, max_episode_steps=max_episode_steps)
    return env, {"family": "cartpole", "split": split, **params}
