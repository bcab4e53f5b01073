"""The start-up budget: exact SB3 gradient-update counts, checked against counted optimizer steps."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch as th
from conftest import make_pendulum_task
from sb3_contrib import TRPO
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.logger import Logger

from distributed_reptile import compute_updates


def _count_steps(model, inner_steps: int, optimizer_attr: str) -> int:
    optimizer: th.optim.Optimizer = model
    for part in optimizer_attr.split("."):
        optimizer = getattr(optimizer, part)
    count = {"n": 0}
    original = optimizer.step

    def counting_step(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    optimizer.step = counting_step
    model.set_logger(Logger(folder=None, output_formats=[]))  # no empty /tmp/SB3-* folder
    model.learn(inner_steps)
    return count["n"]


CASES = [
    (
        "PPO",
        lambda env: PPO("MlpPolicy", env, n_steps=64, batch_size=24, n_epochs=3),
        "policy.optimizer",
        200,
    ),
    ("A2C", lambda env: A2C("MlpPolicy", env, n_steps=10), "policy.optimizer", 95),
    (
        "TRPO",
        lambda env: TRPO("MlpPolicy", env, n_steps=64, batch_size=32, n_critic_updates=3),
        "policy.optimizer",
        130,
    ),
    (
        "DQN",
        lambda env: DQN(
            "MlpPolicy", env, learning_starts=50, train_freq=4, gradient_steps=2, buffer_size=500
        ),
        "policy.optimizer",
        203,
    ),
    (
        "SAC",
        lambda env: SAC(
            "MlpPolicy",
            env,
            learning_starts=30,
            train_freq=3,
            gradient_steps=-1,
            buffer_size=500,
            batch_size=16,
        ),
        "critic.optimizer",
        100,
    ),
    (
        "TD3",
        lambda env: TD3(
            "MlpPolicy", env, learning_starts=10, train_freq=5, buffer_size=500, batch_size=16
        ),
        "critic.optimizer",
        61,
    ),
]


@pytest.mark.parametrize("name,build,optimizer_attr,inner_steps", CASES, ids=[c[0] for c in CASES])
def test_compute_updates_matches_counted_optimizer_steps(name, build, optimizer_attr, inner_steps):
    env = make_pendulum_task(0)[0] if name in ("SAC", "TD3") else gym.make("CartPole-v1")
    model = build(env)
    per_rollout, total, n_rollouts = compute_updates(model, inner_steps)
    counted = _count_steps(model, inner_steps, optimizer_attr)
    if name == "TRPO":
        counted += n_rollouts  # the policy step of TRPO does not go through the optimizer
    assert total == counted
    assert per_rollout > 0 and n_rollouts > 0


def test_episode_based_train_freq_has_no_exact_count():
    model = DQN("MlpPolicy", gym.make("CartPole-v1"), train_freq=(1, "episode"))
    with pytest.raises(ValueError, match="episodes"):
        compute_updates(model, 100)
