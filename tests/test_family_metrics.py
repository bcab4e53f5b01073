"""Episode metrics a family declares (Meta-World's success flag, HalfCheetah's velocity error), and
each benchmark family end to end: a few outer steps on Ray workers, then the evaluation command."""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

from distributed_reptile import ReptileMetaRL, TaskGenerator
from distributed_reptile.cli import main
from distributed_reptile.tasks.episode_metrics import (
    INFO_KEY,
    EpisodeMetrics,
    Metric,
    metrics_of,
)


class _Scripted(gym.Env):
    """Four steps an episode; ``info["success"]`` and ``info["error"]`` follow a script."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        info = {"success": float(self.t == 2), "error": float(self.t)}
        return np.zeros(1, np.float32), 1.0, self.t == 4, False, info


def test_metrics_are_reduced_over_the_episode_and_reported_at_its_end() -> None:
    env = EpisodeMetrics(
        _Scripted(),
        {
            "success": Metric(lambda i: i["success"], reduce="max"),
            "error": Metric(lambda i: i["error"], reduce="mean", higher_is_better=False),
        },
    )
    assert set(metrics_of(gym.wrappers.TimeLimit(env, 10))) == {"success", "error"}
    for _ in range(2):  # a second episode starts afresh
        env.reset()
        infos = [env.step(0)[4] for _ in range(4)]
        assert all(INFO_KEY not in i for i in infos[:3])
        assert infos[3][INFO_KEY] == {"success": 1.0, "error": 2.5}


FAMILIES = {
    "halfcheetah_vel": (
        "distributed_reptile.tasks.families:make_halfcheetah_vel_task",
        {"max_episode_steps": 40},
        {"velocity_error"},
    ),
    "halfcheetah_dir": (
        "distributed_reptile.tasks.families:make_halfcheetah_dir_task",
        {"max_episode_steps": 40},
        set(),
    ),
    "metaworld_reach": (
        "distributed_reptile.tasks.families:make_metaworld_ml1_task",
        {"env_name": "reach-v3", "max_episode_steps": 40},
        {"success"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_on_ray_and_evaluates_with_its_metrics(family, ray_session, tmp_path):
    """Tiny budgets: the command path works and reports the family's metrics, paired. (ML1's
    push-v3 is the same family as reach-v3, with another env name: one of them is enough here.)"""
    from distributed_reptile.imports import resolve_import_path

    path, params, metrics = FAMILIES[family]
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={
            "task_callable": resolve_import_path(path),
            "task_callable_params": params,
        },
        rl_algorithm=PPO,
        rl_algo_kwargs={"policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "n_epochs": 1},
        inner_steps=32,
        outer_steps=2,
        task_batch_size=2,
        meta_lr=0.5,
        seed=0,
        backend="ray",
        num_workers=2,
    ) as meta:
        meta.learn(save_path=str(tmp_path / "ckpt"), save_freq=2)
    ckpt = tmp_path / "ckpt" / "meta_ckpt_outer_2"
    out = tmp_path / "eval"
    args = ["evaluate", str(ckpt), "--tasks", "2", "--episodes", "1", "--budgets", "0", "1"]
    assert main([*args, "--num-workers", "2", "--output", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["metrics"]) == metrics
    for metric in metrics:
        summary = report["metrics"][metric]
        assert set(summary["inits"]) == {"meta", "random"}
        assert len(summary["paired"]["meta - random"]) == 2
        values = np.array(summary["per_task"]["meta"], dtype=float)
        assert values.shape == (1, 2, 2) and np.isfinite(values).all()
        if metric == "success":
            assert ((values >= 0) & (values <= 1)).all()
        assert f"Episode {metric}" in (out / "evaluation.md").read_text()
