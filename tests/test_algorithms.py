"""Each supported algorithm meta-trains 2 outer steps: the meta weights move and stay finite."""

from __future__ import annotations

import pytest
import torch as th
from conftest import make_pendulum_task, weights_of
from sb3_contrib import TRPO
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

from distributed_reptile import ReptileMetaRL, TaskGenerator
from distributed_reptile.tasks.families import make_cartpole_task

OFF_POLICY = {
    "learning_starts": 32,
    "buffer_size": 1000,
    "batch_size": 32,
    "policy_kwargs": {"net_arch": [32]},
}
CASES = {
    "PPO": (PPO, {"n_steps": 64, "batch_size": 32, "n_epochs": 2}, make_cartpole_task),
    "A2C": (A2C, {"n_steps": 16}, make_cartpole_task),
    "TRPO": (TRPO, {"n_steps": 64, "batch_size": 32}, make_cartpole_task),
    "DQN": (DQN, {**OFF_POLICY, "train_freq": 4, "target_update_interval": 16}, make_cartpole_task),
    "SAC": (SAC, OFF_POLICY, make_pendulum_task),
    "TD3": (TD3, OFF_POLICY, make_pendulum_task),
}


@pytest.mark.parametrize("name", list(CASES))
def test_algorithm_meta_trains_and_weights_move_and_stay_finite(name):
    algo, kwargs, make_task = CASES[name]
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_task},
        rl_algorithm=algo,
        rl_algo_kwargs={"policy": "MlpPolicy", **kwargs},
        inner_steps=128,
        outer_steps=2,
        task_batch_size=2,
        meta_lr=0.5,
        backend="serial",
        seed=0,
    ) as meta:
        before = weights_of(meta)
        meta.learn()
        after = weights_of(meta)
    moved = [k for k in before if not th.equal(before[k], after[k])]
    assert moved, "no meta weight moved"
    assert all(th.isfinite(v).all() for v in after.values())
    assert len(meta.step_records) == 2 and all(r["env_steps"] >= 2 * 128 for r in meta.step_records)


def test_off_policy_algorithm_runs_on_ray_workers(ray_session):
    algo, kwargs, make_task = CASES["SAC"]
    common = dict(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_task},
        rl_algorithm=algo,
        rl_algo_kwargs={"policy": "MlpPolicy", **kwargs},
        inner_steps=96,
        outer_steps=2,
        task_batch_size=3,
        meta_lr=0.5,
        seed=0,
    )
    with ReptileMetaRL(backend="ray", num_workers=2, **common) as meta:
        meta.learn()
        on_ray = weights_of(meta)
    with ReptileMetaRL(backend="serial", **common) as meta:
        meta.learn()
        serial = weights_of(meta)
    assert all(th.equal(on_ray[k], serial[k]) for k in serial)
