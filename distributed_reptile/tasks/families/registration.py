"""Gymnasium ids of the built-in task families (``gymnasium.make("distributed_reptile/...")``).

Registered when :mod:`distributed_reptile.tasks.families` is imported. Each id's ``kwargs`` are the
task parameters (override them in ``gymnasium.make``), and ``max_episode_steps`` the family's
horizon. Entry points are strings, so the MuJoCo ids import MuJoCo / Meta-World only in
``gymnasium.make``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

NAMESPACE = "distributed_reptile"
_PKG = "distributed_reptile.tasks.families"

#: ``id -> gymnasium.register`` arguments.
ENV_SPECS: dict[str, dict[str, Any]] = {
    f"{NAMESPACE}/CartPolePhysics-v0": {
        "entry_point": f"{_PKG}.cartpole:CartPolePhysicsEnv",
        "max_episode_steps": 500,
        "kwargs": {"length": 0.5, "masspole": 0.1, "gravity": 9.8},
    },
    f"{NAMESPACE}/Pendulum-v0": {
        "entry_point": f"{_PKG}.pendulum:PendulumPhysicsEnv",
        "max_episode_steps": 200,
        "kwargs": {"gravity": 10.0, "mass": 1.0, "length": 1.0},
    },
    f"{NAMESPACE}/PointNav-v0": {
        "entry_point": f"{_PKG}.pointnav:PointNavEnv",
        "max_episode_steps": 100,
        "kwargs": {"goal": (0.3, 0.3)},
    },
    f"{NAMESPACE}/HalfCheetahVel-v0": {
        "entry_point": f"{_PKG}._mujoco_envs:HalfCheetahVelEnv",
        "max_episode_steps": 200,
        "kwargs": {"target_velocity": 1.0},
    },
    f"{NAMESPACE}/HalfCheetahDir-v0": {
        "entry_point": f"{_PKG}._mujoco_envs:HalfCheetahDirEnv",
        "max_episode_steps": 200,
        "kwargs": {"direction": 1},
    },
    f"{NAMESPACE}/MetaWorldML1-v0": {
        "entry_point": f"{_PKG}.metaworld_ml1:MetaWorldML1Env",
        "max_episode_steps": 500,
        "kwargs": {"env_name": "reach-v3", "split": "train", "task_index": 0, "benchmark_seed": 0},
    },
}


def register_families() -> list[str]:
    """Register every id of :data:`ENV_SPECS` not registered yet; return the ids registered now."""
    added = []
    for env_id, spec in ENV_SPECS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, **spec)
        added.append(env_id)
    return added
