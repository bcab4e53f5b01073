"""CartPole with random physics: pole half-length, pole mass and gravity."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

#: Training range of each parameter: ``(low, high)``.
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "length": (0.25, 0.75),
    "masspole": (0.05, 0.2),
    "gravity": (7.0, 12.0),
}
#: Held-out range, disjoint from training on pole length (longer poles).
TEST_RANGES: dict[str, tuple[float, float]] = {
    "length": (0.8, 1.0),
    "masspole": (0.05, 0.2),
    "gravity": (7.0, 12.0),
}


class CartPolePhysicsEnv(CartPoleEnv):
    """CartPole-v1 whose physics come from the constructor, with derived quantities kept consistent."""

    def __init__(
        self,
        length: float = 0.5,
        masspole: float = 0.1,
        gravity: float = 9.8,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode=render_mode)
        self.length = float(length)
        self.masspole = float(masspole)
        self.gravity = float(gravity)
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length


def sample_params(rng: np.random.Generator, split: str = "train") -> dict[str, float]:
    ranges = TRAIN_RANGES if split == "train" else TEST_RANGES
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in ranges.items()}


def make_cartpole_task(
    random_seed: int, split: str = "train", max_episode_steps: int = 500
) -> tuple[gym.Env, dict[str, Any]]:
    """A CartPole task drawn from ``split`` ("train" or "test") with ``random_seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    params = sample_params(np.random.default_rng(random_seed), split)
    env = gym.wrappers.TimeLimit(CartPolePhysicsEnv(**params), max_episode_steps=max_episode_steps)
    return env, {"family": "cartpole", "split": split, **params}
