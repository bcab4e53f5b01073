"""The experiment presets (experiments/presets.py): each names a family that builds with its task
parameters, PPO settings that build a model on that family's env, and a multi-task baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from stable_baselines3 import PPO

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from presets import PRESETS, get_preset, multitask_kwargs  # noqa: E402

from distributed_reptile.evaluation.core import held_out_specs, resolve_task_callable  # noqa: E402
from distributed_reptile.tasks.families import MUJOCO_FAMILIES  # noqa: E402


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_its_tasks_and_models(name: str) -> None:
    preset = get_preset(name)
    if preset["family"] in MUJOCO_FAMILIES:
        pytest.importorskip("mujoco")
        if preset["family"] == "metaworld_ml1":
            pytest.importorskip("metaworld")
    family, make_task = resolve_task_callable(preset["family"])
    params = dict(preset.get("task_params") or {})
    env, info = make_task(random_seed=3, **params)
    try:
        for key, value in params.items():
            assert info.get(key, value) == value  # the task is the one the preset asks for
        model = PPO(env=env, device="cpu", **preset["rl_algo_kwargs"])
        baseline = PPO(env=env, device="cpu", **multitask_kwargs(preset))
        # the baseline's weights fit the meta policy's (the evaluation compares them)
        shapes = {n: p.shape for n, p in model.policy.named_parameters()}
        assert {n: p.shape for n, p in baseline.policy.named_parameters()} == shapes
        assert preset["inner_rollouts"] >= 1 and preset["task_batch_size"] >= 1
        for layer in preset["ignored_layers"] or []:
            assert any(n.startswith(layer) for n in shapes), f"{layer} names no parameter"
    finally:
        env.close()
    (spec,) = held_out_specs(family, 1, task_params=params)
    held_env = spec.build_env()
    held_env.close()
