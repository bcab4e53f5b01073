"""Pendulum swing-up with random physics: gravity, mass and length.

Each task is gymnasium's Pendulum-v1 (``PendulumEnv``) with its ``g``, ``m`` and ``l`` set from
three parameters drawn uniformly:

* ``gravity`` (``g``), in m/s^2;
* ``mass`` (``m``), in kg;
* ``length`` (``l``), in metres.

``PendulumEnv.step`` reads ``self.g``, ``self.m`` and ``self.l`` at every step
(``thdot += (3 g / (2 l) sin(th) + 3 / (m l^2) u) dt``), so setting the three attributes is all it
takes; :class:`PendulumPhysicsEnv` also exposes them under their long names (read-only aliases, so
the two can never disagree). The torque limit (2), speed limit (8) and ``dt`` (0.05) are unchanged.

Train/test disjointness: the held-out ``"test"`` split draws ``length`` from ``[1.1, 1.3]``, the
``"train"`` split from ``[0.5, 1.0]``. The intervals do not meet, so no train task can equal a test
task whatever ``gravity`` and ``mass`` are: held-out pendulums are longer.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from distributed_reptile.tasks.families._common import Ranges, check_split, sample_uniform

#: Training range of each parameter: ``(low, high)``.
TRAIN_RANGES: Ranges = {
    "gravity": (8.0, 12.0),
    "mass": (0.5, 1.5),
    "length": (0.5, 1.0),
}
#: Held-out range, disjoint from training on length (longer pendulums).
TEST_RANGES: Ranges = {
    "gravity": (8.0, 12.0),
    "mass": (0.5, 1.5),
    "length": (1.1, 1.3),
}
#: The parameter whose train and test intervals are disjoint.
DISJOINT_ON = "length"
#: Default episode length (Pendulum-v1's).
MAX_EPISODE_STEPS = 200


class PendulumPhysicsEnv(PendulumEnv):
    """Pendulum-v1 whose gravity, mass and length come from the constructor.

    :param gravity: gravitational acceleration ``g``, in m/s^2.
    :param mass: pendulum mass ``m``, in kg.
    :param length: pendulum length ``l``, in metres.
    :param render_mode: passed to :class:`PendulumEnv`.
    """

    def __init__(
        self,
        gravity: float = 10.0,
        mass: float = 1.0,
        length: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        if gravity <= 0 or mass <= 0 or length <= 0:
            raise ValueError(
                f"gravity, mass and length must be positive, got {gravity}, {mass}, {length}."
            )
        super().__init__(render_mode=render_mode, g=float(gravity))
        self.m = float(mass)
        self.l = float(length)  # noqa: E741 (PendulumEnv's own attribute name)

    @property
    def gravity(self) -> float:
        return self.g

    @property
    def mass(self) -> float:
        return self.m

    @property
    def length(self) -> float:
        return self.l


def sample_params(rng: np.random.Generator, split: str = "train") -> dict[str, float]:
    """Draw ``gravity``, ``mass`` and ``length`` from ``split``'s ranges."""
    ranges = TRAIN_RANGES if check_split(split) == "train" else TEST_RANGES
    return sample_uniform(rng, ranges)


def make_pendulum_task(
    random_seed: int, split: str = "train", max_episode_steps: int = MAX_EPISODE_STEPS
) -> tuple[gym.Env, dict[str, Any]]:
    """A Pendulum task drawn from ``split`` ("train" or "test") with ``random_seed``.

    The same ``(random_seed, split)`` always gives the same physics.
    """
    params = sample_params(np.random.default_rng(random_seed), split)
    core = PendulumPhysicsEnv(
        gravity=params["gravity"], mass=params["mass"], length=params["length"]
    )
    env = gym.wrappers.TimeLimit(core, max_episode_steps=max_episode_steps)
    return env, {"family": "pendulum", "split": split, **params}
