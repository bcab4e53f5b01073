"""The sine-wave reproduction: the NumPy learner against torch, and the command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th

from distributed_reptile import ReptileMetaRL, TaskGenerator
from distributed_reptile.algorithms.base import is_sb3_like
from distributed_reptile.evaluation import adaptation_returns, held_out_specs, resolve_budgets
from distributed_reptile.sine import MlpRegressorPolicy, SupervisedRegressor, make_sine_task
from distributed_reptile.sine.env import GRID_POINTS
from distributed_reptile.sine.learner import mlp_forward_backward
from distributed_reptile.weights import module_to_numpy

REPO = Path(__file__).resolve().parents[1]


def test_numpy_gradients_and_adam_steps_equal_torch_autograd_and_adam():
    env, _ = make_sine_task(3, split="test")  # the fixed support set: the same batch every step
    model = SupervisedRegressor(env=env, seed=0)
    reference = MlpRegressorPolicy()
    reference.load_state_dict(model.policy.state_dict())
    x, y = (th.from_numpy(a) for a in env.training_batch(np.random.default_rng(0), 10))

    loss, grads = mlp_forward_backward(model.policy.numpy_params(), x.numpy(), y.numpy())
    torch_loss = ((reference(x) - y) ** 2).mean()
    torch_loss.backward()
    assert loss == pytest.approx(float(torch_loss.detach()), rel=1e-5)
    for g, p in zip(grads, reference.parameters(), strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-4, atol=1e-6)

    model.learn(32 * 10)  # 32 Adam steps on batches of 10
    optimizer = th.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.0, 0.999))
    for _ in range(32):
        optimizer.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        optimizer.step()
    assert model.num_timesteps == 320 and len(model.ep_info_buffer) == 32
    for mine, theirs in zip(model.policy.parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(mine.detach().numpy(), theirs.detach().numpy(), atol=2e-6)


def test_test_tasks_carry_a_fixed_support_set_and_the_grid_return_is_minus_the_squared_error():
    env, info = make_sine_task(7, split="test")
    assert 0.1 <= info["amplitude"] <= 5 and 0 <= info["phase"] <= 2 * np.pi
    rng = np.random.default_rng(0)
    x1, _ = env.training_batch(rng, 10)
    x2, _ = env.training_batch(rng, 10)
    assert np.array_equal(x1, x2) and x1.shape == (10, 1)
    train_env, _ = make_sine_task(7, split="train")
    assert not np.array_equal(*(train_env.training_batch(rng, 10)[0] for _ in range(2)))
    assert make_sine_task(7, split="train")[1]["amplitude"] != info["amplitude"]
    obs, _ = env.reset()
    total, done = 0.0, False
    while not done:
        obs, reward, done, _, _ = env.step(np.zeros(1))
        total += reward
    assert -total / GRID_POINTS == pytest.approx(
        float(np.mean(env.function(env.grid) ** 2)), rel=1e-5
    )


def test_supervised_regressor_is_an_sb3_like_learner_the_trainer_runs(tmp_path: Path):
    assert is_sb3_like(SupervisedRegressor)
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_sine_task, "history": False},
        rl_algorithm=SupervisedRegressor,
        rl_algo_kwargs={"policy": "MlpRegressor", "device": "cpu"},
        inner_steps=320,
        outer_steps=3,
        task_batch_size=2,
        meta_lr=0.1,
        backend="serial",
        seed=0,
    ) as meta:
        before = module_to_numpy(meta.meta_policy)
        meta.learn(save_path=str(tmp_path), save_prefix="sine")
        after = module_to_numpy(meta.meta_policy)
        specs = held_out_specs(make_sine_task, 2)
        budgets = resolve_budgets(meta.meta_algo, env_steps=[0, 320])
        returns, _ = adaptation_returns(meta.runner, after, specs, budgets, episodes=1)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert (tmp_path / "sine_outer_3" / "meta_algo.zip").exists()  # the learner's own save()
    assert meta.step_records[-1]["ep_return_mean"] < 0  # minus the training loss
    assert returns.shape == (2, 2) and np.all(returns < 0)
    loaded = SupervisedRegressor.load(
        tmp_path / "sine_outer_3" / "meta_algo.zip", env=specs[0].build_env()
    )
    for k, v in loaded.policy.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), after[k])


def test_sine_command_trains_on_ray_workers_writes_its_outputs_and_beats_the_random_init(
    tmp_path: Path,
):
    out = tmp_path / "sine"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distributed_reptile.sine",
            "--out",
            str(out),
            "--outer-steps",
            "600",
            # a gentler outer loop than the default's (tuned for 8000 steps)
            "--task-batch-size",
            "5",
            "--meta-lr",
            "0.4",
            "--num-workers",
            "2",
            "--eval-tasks",
            "40",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "sine.json").read_text())
    assert (out / "sine.png").stat().st_size > 20_000
    assert report["protocol"]["outer_steps"] == 600 and report["protocol"]["backend"] == "ray"
    assert report["timing"]["per_task_mean_seconds"]["round_trip"] is not None  # ran on Ray actors
    assert Path(report["outputs"]["checkpoint"]).is_dir()
    mse = report["mse"]
    assert mse["meta"]["after_adaptation"]["n"] == 40
    # meta-init MSE after 32 steps is lower than the random init's, beyond the paired interval
    assert mse["meta_minus_random"]["after_adaptation"]["ci_high"] < 0
    assert mse["meta"]["after_adaptation"]["mean"] < mse["random"]["after_adaptation"]["mean"] - 0.5


def test_sine_config_trains_through_the_train_command(tmp_path: Path):
    from distributed_reptile.cli import main

    rc = main(
        [
            "train",
            str(REPO / "configs" / "sine.yaml"),
            "--output",
            str(tmp_path / "run"),
            "--set",
            "outer_steps=3",
            "--set",
            "backend=serial",
            "--set",
            "learn.save_freq=0",
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["outer_steps"] == 3 and summary["completed"] is True
    assert summary["final_mean_return"] < 0  # minus the training loss
    assert (tmp_path / "run" / "config.yaml").read_text().count("SupervisedRegressor") == 1
