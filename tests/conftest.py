"""Shared fixtures: one local Ray instance per test session, small tasks and learners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from distributed_reptile import TaskGenerator
from distributed_reptile.tasks.families import make_cartpole_task

SMALL_PPO: dict[str, Any] = {
    "policy": "MlpPolicy",
    "n_steps": 64,
    "batch_size": 32,
    "n_epochs": 2,
    "policy_kwargs": {"net_arch": [16, 16]},
}


def make_pendulum_task(random_seed: int) -> tuple[gym.Env, dict[str, Any]]:
    """A tiny continuous-action family for off-policy tests: Pendulum with random gravity."""
    g = float(np.random.default_rng(random_seed).uniform(8.0, 12.0))
    return gym.make("Pendulum-v1", g=g, max_episode_steps=50), {"g": g}


def cartpole_kwargs(**overrides: Any) -> dict[str, Any]:
    """ReptileMetaRL arguments for a small PPO CartPole-family run."""
    kwargs: dict[str, Any] = {
        "tasks_generator_cls": TaskGenerator,
        "tasks_generator_params": {"task_callable": make_cartpole_task},
        "rl_algorithm": __import__("stable_baselines3").PPO,
        "rl_algo_kwargs": dict(SMALL_PPO),
        "inner_steps": 128,
        "outer_steps": 3,
        "task_batch_size": 4,
        "meta_lr": 0.5,
        "seed": 0,
        "backend": "serial",
    }
    kwargs.update(overrides)
    return kwargs


def weights_of(trainer: Any) -> dict[str, th.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.meta_policy.state_dict().items()}


def assert_same_weights(a: dict[str, th.Tensor], b: dict[str, th.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not th.equal(a[k], b[k])]
    assert not different, f"weights differ in {different}"


@pytest.fixture(scope="session")
def ray_session():
    """One loopback-only local Ray instance shared by the whole session."""
    import ray

    from distributed_reptile.ray_utils import ensure_ray

    tests_dir = str(Path(__file__).resolve().parent)
    started = ensure_ray(
        num_cpus=4,
        ray_init_kwargs={
            "resources": {"learner_slot": 4},
            "log_to_driver": False,
            # workers import task callables defined in the tests
            "runtime_env": {"env_vars": {"PYTHONPATH": tests_dir}},
        },
    )
    yield ray
    if started == "started":
        ray.shutdown()
