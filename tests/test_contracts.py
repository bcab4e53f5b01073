"""The contracts the rest of the code must meet: determinism across backends, exact model reuse,
and exact resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import (
    SMALL_PPO,
    assert_same_weights,
    cartpole_kwargs,
    make_pendulum_task,
    weights_of,
)
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

from distributed_reptile import InnerLearner, ReptileMetaRL, TaskGenerator, TaskJob, linear_schedule
from distributed_reptile.seeding import task_seed, task_seeds
from distributed_reptile.tasks.families import make_cartpole_task
from distributed_reptile.weights import module_to_numpy

#: task_seed(0, 0), task_seed(0, 1), task_seed(7, 2**40) as every earlier version derived them.
PINNED_TASK_SEEDS = [786342974, 1754712616, 1019484015]


def _train(**overrides: Any) -> tuple[dict[str, th.Tensor], list[dict[str, Any]]]:
    with ReptileMetaRL(**cartpole_kwargs(**overrides)) as meta:
        meta.learn()
        return weights_of(meta), meta.step_records


def test_serial_ray1_ray2_give_bit_identical_meta_weights(ray_session, monkeypatch):
    from distributed_reptile.runners import ray_transport

    serial, serial_records = _train(backend="serial")
    ray1, ray1_records = _train(backend="ray", num_workers=1)
    ray2, ray2_records = _train(backend="ray", num_workers=2)
    assert_same_weights(serial, ray1)
    assert_same_weights(serial, ray2)
    # Several tasks per actor call (the batch split over the workers, or three at a time).
    auto, _ = _train(backend="ray", num_workers=2, tasks_per_call="auto")
    three, _ = _train(backend="ray", num_workers=2, tasks_per_call=3)
    assert_same_weights(serial, auto)
    assert_same_weights(serial, three)
    # Weights through the object store (as large networks go) instead of inside the calls.
    monkeypatch.setattr(ray_transport, "INLINE_WEIGHTS_BYTES", 0)
    stored, _ = _train(backend="ray", num_workers=2)
    assert_same_weights(serial, stored)
    assert [r["tasks"] for r in serial_records] == [r["tasks"] for r in ray2_records]
    # The meta weights did move, so the comparison is not between untouched initialisations.
    with ReptileMetaRL(**cartpole_kwargs()) as untrained:
        init = weights_of(untrained)
    assert any(not th.equal(init[k], serial[k]) for k in init)


def test_same_seed_same_weights_different_seed_different_weights():
    a, _ = _train(outer_steps=2)
    b, _ = _train(outer_steps=2)
    c, _ = _train(outer_steps=2, seed=1)
    assert_same_weights(a, b)
    assert any(not th.equal(a[k], c[k]) for k in a)


ALGOS = {
    "PPO": (PPO, dict(SMALL_PPO), make_cartpole_task),
    "A2C": (
        A2C,
        {"policy": "MlpPolicy", "n_steps": 16, "policy_kwargs": {"net_arch": [16]}},
        make_cartpole_task,
    ),
    "DQN": (
        DQN,
        {
            "policy": "MlpPolicy",
            "learning_starts": 20,
            "buffer_size": 500,
            "batch_size": 16,
            "train_freq": 4,
            "target_update_interval": 8,
            "policy_kwargs": {"net_arch": [16]},
        },
        make_cartpole_task,
    ),
    "SAC": (
        SAC,
        {
            "policy": "MlpPolicy",
            "learning_starts": 20,
            "buffer_size": 500,
            "batch_size": 16,
            "policy_kwargs": {"net_arch": [16]},
        },
        make_pendulum_task,
    ),
    "TD3": (
        TD3,
        {
            "policy": "MlpPolicy",
            "learning_starts": 20,
            "buffer_size": 500,
            "batch_size": 16,
            "policy_delay": 2,
            "policy_kwargs": {"net_arch": [16]},
        },
        make_pendulum_task,
    ),
}


@pytest.mark.parametrize("name", list(ALGOS))
def test_reused_model_adapts_bit_for_bit_like_a_new_model(name):
    algo, kwargs, make_task = ALGOS[name]
    generator = TaskGenerator(task_callable=make_task, generator_seed=3)
    first, second = generator.sample_spec(0), generator.sample_spec(1)

    def learner(reuse: bool) -> InnerLearner:
        return InnerLearner(algo, kwargs, inner_steps=120, reuse_model=reuse, device="cpu")

    meta_env = first.build_env()
    meta_weights = module_to_numpy(learner(False).build_model(meta_env).policy)

    reused = learner(True)
    warm = reused.run(TaskJob(first, task_seed=11, index=0), meta_weights)
    after_reuse = reused.run(TaskJob(second, task_seed=22, index=1), meta_weights)
    fresh = learner(False).run(TaskJob(second, task_seed=22, index=1), meta_weights)

    assert after_reuse.weights.keys() == fresh.weights.keys()
    for key in fresh.weights:
        np.testing.assert_array_equal(after_reuse.weights[key], fresh.weights[key], err_msg=key)
    assert after_reuse.env_steps == fresh.env_steps >= 120
    # Adaptation moved the weights, and differently on two tasks/seeds.
    assert any(not np.array_equal(fresh.weights[k], meta_weights[k]) for k in fresh.weights)
    assert any(not np.array_equal(fresh.weights[k], warm.weights[k]) for k in fresh.weights)


def _resume_kwargs(**overrides: Any) -> dict[str, Any]:
    params = {"task_callable": make_cartpole_task, "revisit_ratio": 0.5}
    return cartpole_kwargs(
        outer_steps=4,
        tasks_generator_params=params,
        use_meta_optimizer=True,
        meta_optimizer_kwargs={"betas": (0.5, 0.9)},
        meta_lr=linear_schedule(0.5, 0.1),
        **overrides,
    )


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path, ray_session):
    with ReptileMetaRL(**_resume_kwargs()) as full:
        full.learn(save_freq=2, save_path=str(tmp_path), save_prefix="run")
        expected, expected_records = weights_of(full), full.step_records
    ckpt = tmp_path / "run_outer_2"
    assert ckpt.is_dir() and (tmp_path / "run_outer_4").is_dir()

    # Resume on another backend and worker count: the run must not notice.
    with ReptileMetaRL.load(ckpt, backend="ray", num_workers=2) as resumed:
        assert resumed.num_outer_steps == 2 and resumed.outer_steps == 4
        assert [r["tasks"] for r in resumed.step_records] == [
            r["tasks"] for r in expected_records[:2]
        ]
        resumed.learn(reset_num_timesteps=False)
        got, got_records = weights_of(resumed), resumed.step_records

    assert_same_weights(expected, got)
    assert [r["tasks"] for r in expected_records] == [r["tasks"] for r in got_records]
    assert sum(r["revisits"] for r in expected_records) > 0


@pytest.mark.parametrize("backend", ["serial", "ray"])
def test_run_stopped_by_a_callback_then_resumed_equals_uninterrupted_run(
    tmp_path, backend, request
):
    """On Ray the next step's tasks are drawn ahead: the stop leaves that draw unused, and the
    checkpoint must hold the task source as if it had never been made."""
    from distributed_reptile.callbacks import StopOnStepRecord

    if backend == "ray":
        request.getfixturevalue("ray_session")
    with ReptileMetaRL(**_resume_kwargs()) as full:
        full.learn()
        expected = weights_of(full)
    with ReptileMetaRL(**_resume_kwargs(backend=backend, num_workers=2)) as interrupted:
        interrupted.learn(
            callback=StopOnStepRecord("outer_step", 2), save_path=str(tmp_path), save_prefix="cut"
        )
        assert interrupted.num_outer_steps == 2
    with ReptileMetaRL.load(tmp_path / "cut_outer_2") as resumed:
        resumed.learn(reset_num_timesteps=False)
        assert resumed.num_outer_steps == 4
        assert_same_weights(expected, weights_of(resumed))


def test_task_seeds_of_a_step_are_the_per_task_seeds_bit_for_bit() -> None:
    """The driver derives a step's task seeds together (NumPy's SeedSequence hash on uint32
    columns); each must be the one ``task_seed`` gives, for run seeds and meta steps of one and two
    32-bit words and beyond 64 bits (masked), and the values must stay those of earlier versions."""
    rng = np.random.default_rng(0)
    cases = [
        (0, list(range(300))),
        (2**32 + 5, [0, 1, 2**32 - 1, 2**32, 2**40 + 3, 2**64 - 1]),
        (2**64 - 1, [7, 2**33, 2**64 + 9]),
        (
            123_456_789,
            [int(x) for x in rng.integers(0, 2**63, 200)] + list(range(10**6, 10**6 + 50)),
        ),
    ]
    for run_seed, steps in cases:
        assert task_seeds(run_seed, steps) == [task_seed(run_seed, m) for m in steps]
    assert task_seeds(5, []) == []
    assert [task_seed(0, 0), task_seed(0, 1), task_seed(7, 2**40)] == PINNED_TASK_SEEDS
