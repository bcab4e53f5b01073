"""Run configs: every file in configs/ validates, bad input is one error naming field and fix."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from distributed_reptile import BaseMetaAlgorithm, LinearSchedule, TaskGenerator
from distributed_reptile.algorithms.base import is_sb3_like
from distributed_reptile.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config,
    resolve_import_path,
)
from distributed_reptile.tasks.families import FAMILIES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "tasks_generator_params": {
        "task_callable": "distributed_reptile.tasks.families:make_cartpole_task"
    },
    "rl_algorithm": "stable_baselines3:PPO",
    "rl_algo_kwargs": {"policy": "MlpPolicy", "n_steps": 64, "batch_size": 32},
    "inner_steps": 64,
    "outer_steps": 2,
    "meta_lr": 0.5,
}


class TwoArgGenerator:
    """A user task generator whose keyword arguments are checked against its signature."""

    def __init__(self, env_id: str, horizon: int = 100) -> None:
        self.env_id = env_id
        self.horizon = horizon

    def get_task(self, meta_step: int, seed: int | None = None) -> Any:
        raise NotImplementedError

    def reset_history(self) -> None:
        pass


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    return info.value.problems


def _with(**changes: Any) -> dict[str, Any]:
    data = {**MINIMAL, **changes}
    return {k: v for k, v in data.items() if v is not ...}


# ---------------------------------------------------------------------- shipped configs
def test_configs_folder_has_the_smoke_config_and_one_per_family() -> None:
    names = {p.name for p in CONFIGS}
    assert "smoke.yaml" in names
    used = {load_config(p).tasks_generator_params.get("task_callable") for p in CONFIGS}
    assert "distributed_reptile.sine:make_sine_task" in used  # the sine reproduction
    for family, func in FAMILIES.items():
        path = f"distributed_reptile.tasks.families:{func.__name__}"
        assert path in used, f"no config in configs/ for the {family} family ({path})"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates_and_resolves_to_trainer_arguments(path: Path) -> None:
    config = load_config(path)
    kwargs = config.trainer_kwargs()
    trainer = config.trainer_class()
    assert issubclass(trainer, BaseMetaAlgorithm)
    # an SB3 algorithm (the sine config uses the SB3-like SupervisedRegressor)
    assert issubclass(kwargs["rl_algorithm"], BaseAlgorithm) or path.name == "sine.yaml"
    assert is_sb3_like(kwargs["rl_algorithm"])
    assert inspect.isclass(kwargs["tasks_generator_cls"])
    if (
        kwargs["tasks_generator_cls"] is TaskGenerator
        and "task_callable" in kwargs["tasks_generator_params"]
    ):
        assert callable(kwargs["tasks_generator_params"]["task_callable"])
    # the same argument names as the trainer's constructor and learn()
    init = inspect.signature(trainer.__init__).parameters
    assert set(kwargs) <= set(init)
    learn = inspect.signature(trainer.learn).parameters
    assert set(config.learn_kwargs()) <= set(learn)
    # at least one whole rollout per inner loop
    if "n_steps" in config.rl_algo_kwargs:
        assert config.rl_algo_kwargs["n_steps"] <= config.inner_steps
    # written back, the config loads to the same thing
    assert RunConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_smoke_config_trains_on_the_serial_backend() -> None:
    config = load_config(REPO / "configs" / "smoke.yaml", ["backend=serial", "verbose=0"])
    with config.trainer_class()(**config.trainer_kwargs()) as meta:
        meta.learn(**{**config.learn_kwargs(), "save_freq": 0, "save_final": False})
        assert meta.num_outer_steps == config.outer_steps
        assert all(
            r["env_steps"] >= config.inner_steps * config.task_batch_size for r in meta.step_records
        )
        # meta_lr {linear: [1.0, 0.5]} became a schedule: 1.0 at the first step, 0.5 at the last
        assert isinstance(meta.meta_lr, LinearSchedule)
        assert [r["meta_lr"] for r in meta.step_records] == [1.0, 0.75, 0.5]


# ---------------------------------------------------------------------- resolution
def test_trainer_kwargs_resolve_import_paths_nested_in_policy_kwargs() -> None:
    data = _with(
        rl_algo_kwargs={
            "policy": "MlpPolicy",
            "n_steps": 64,
            "policy_kwargs": {"activation_fn": "torch.nn:ReLU", "net_arch": [8]},
        },
        meta_optimizer_cls="torch.optim:SGD",
        use_meta_optimizer=True,
        meta_lr={"linear": [0.3, 0.1]},
    )
    kwargs = RunConfig.from_dict(data).trainer_kwargs()
    assert kwargs["rl_algorithm"] is PPO
    assert kwargs["rl_algo_kwargs"]["policy_kwargs"]["activation_fn"] is th.nn.ReLU
    assert kwargs["meta_optimizer_cls"] is th.optim.SGD
    assert kwargs["meta_lr"] == LinearSchedule(0.3, 0.1)
    # TaskGenerator defaults stay the generator's own: only the keys given are passed
    assert set(kwargs["tasks_generator_params"]) == {"task_callable"}


def test_resolve_import_path_accepts_dotted_attributes_and_names_the_fix() -> None:
    assert resolve_import_path("torch.nn:Module.forward") is th.nn.Module.forward
    with pytest.raises(ValueError, match=r"write it as 'package.module:name'"):
        resolve_import_path("stable_baselines3.PPO")
    with pytest.raises(ValueError, match=r"has no attribute 'PPPO'\): check the name after ':'"):
        resolve_import_path("stable_baselines3:PPPO")


# ---------------------------------------------------------------------- bad input
def test_unresolvable_task_callable_names_field_cause_and_fix() -> None:
    data = _with(tasks_generator_params={"task_callable": "my_pkg.tasks:make_env"})
    assert _problems(data) == [
        "tasks_generator_params.task_callable: cannot import 'my_pkg.tasks:make_env' "
        "(No module named 'my_pkg'): check the module path"
    ]


def test_every_problem_is_reported_at_once_each_with_its_field() -> None:
    data = _with(
        num_worker=2,  # typo
        inner_steps="many",  # wrong type
        rl_algorithm="stable_baselines3:PPOO",  # does not resolve
        learn={"save_freq": -1, "keep_lst": 2},
        tasks_generator_params={
            "task_callable": "distributed_reptile.tasks.families:make_cartpole_task",
            "revist_ratio": 0.3,
        },
    )
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data, source="bad.yaml")
    problems = info.value.problems
    fields = sorted(p.split(":", 1)[0] for p in problems)
    assert fields == sorted(
        [
            "num_worker",
            "inner_steps",
            "rl_algorithm",
            "learn.save_freq",
            "learn.keep_lst",
            "tasks_generator_params.revist_ratio",
        ]
    )
    text = str(info.value)
    assert text.startswith("invalid run config in bad.yaml (6 problem(s)):")
    assert "num_worker: unknown key: did you mean 'num_workers'?" in text
    assert "learn.keep_lst: unknown key: did you mean 'keep_last'?" in text
    assert "tasks_generator_params.revist_ratio: unknown key: did you mean 'revisit_ratio'?" in text
    assert "inner_steps: must be a positive integer, got 'many'" in text


def test_rl_algo_kwargs_are_checked_against_the_algorithm() -> None:
    data = _with(
        rl_algo_kwargs={
            "policy": "MlpPolcy",
            "n_step": 64,
            "env": "CartPole-v1",
            "policy_kwargs": {"activation_fn": "torch.nn:Relu"},
        }
    )
    problems = _problems(data)
    assert (
        "rl_algo_kwargs.env: the trainer gives each task its own env: remove this key" in problems
    )
    assert (
        "rl_algo_kwargs.n_step: unknown argument (PPO takes no argument 'n_step'): "
        "did you mean 'n_steps'?"
    ) in problems
    assert any(
        p.startswith("rl_algo_kwargs.policy: PPO has no policy 'MlpPolcy'") for p in problems
    )
    assert any(
        p.startswith("rl_algo_kwargs.policy_kwargs.activation_fn: cannot import 'torch.nn:Relu'")
        for p in problems
    )


def test_classes_of_the_wrong_kind_are_refused_with_the_fix() -> None:
    problems = _problems(
        _with(rl_algorithm="torch.nn:ReLU", algorithm="distributed_reptile:TaskGenerator")
    )
    assert any(
        p.startswith("rl_algorithm: 'torch.nn:ReLU' is not a Stable-Baselines3 algorithm class")
        and "'stable_baselines3:PPO'" in p
        for p in problems
    )
    assert any(
        p.startswith("algorithm: 'distributed_reptile:TaskGenerator' is not a BaseMetaAlgorithm")
        for p in problems
    )


def test_task_callable_params_are_checked_against_the_task_callable() -> None:
    params = {
        "task_callable": "distributed_reptile.tasks.families:make_cartpole_task",
        "task_callable_params": {"max_episode_step": 100},
    }
    assert _problems(_with(tasks_generator_params=params)) == [
        "tasks_generator_params.task_callable_params.max_episode_step: unknown argument "
        "(distributed_reptile.tasks.families:make_cartpole_task takes no argument "
        "'max_episode_step'): did you mean 'max_episode_steps'?"
    ]


def test_task_generator_needs_exactly_one_task_source() -> None:
    problems = _problems(_with(tasks_generator_params={}))
    assert len(problems) == 1 and problems[0].startswith(
        "tasks_generator_params: give exactly one of task_callable"
    )


def test_custom_generator_params_are_checked_against_its_signature() -> None:
    data = _with(
        tasks_generator_cls="test_config:TwoArgGenerator",
        tasks_generator_params={"env_id": "CartPole-v1", "horizn": 50},
    )
    assert _problems(data) == [
        "tasks_generator_params.horizn: unknown argument (test_config:TwoArgGenerator takes no "
        "argument 'horizn'): did you mean 'horizon'?"
    ]
    ok = RunConfig.from_dict(
        _with(
            tasks_generator_cls="test_config:TwoArgGenerator",
            tasks_generator_params={"env_id": "CartPole-v1"},
        )
    )
    assert ok.trainer_kwargs()["tasks_generator_params"] == {"env_id": "CartPole-v1"}


def test_meta_lr_is_a_number_or_a_linear_schedule() -> None:
    assert _problems(_with(meta_lr={"cosine": [1, 0]})) == [
        "meta_lr: must be a number or {linear: [start, end]}"
    ]
    assert _problems(_with(meta_lr="fast")) == [
        "meta_lr: must be a number or {linear: [start, end]}"
    ]
    assert RunConfig.from_dict(_with(meta_lr=1)).trainer_kwargs()["meta_lr"] == 1.0


def test_missing_required_keys_are_named() -> None:
    problems = _problems(_with(rl_algorithm=..., inner_steps=...))
    assert sorted(problems) == [
        "inner_steps: missing: this key is required",
        "rl_algorithm: missing: this key is required",
    ]


# ---------------------------------------------------------------------- files and overrides
def test_overrides_set_nested_keys_with_yaml_typed_values() -> None:
    data = {"learn": {"save_freq": 1}, "inner_steps": 64}
    out = apply_overrides(
        data,
        [
            "learn.save_freq=5",
            "inner_steps=128",
            "meta_lr=0.25",
            "seed=null",
            "learn.progress_bar=true",
            "rl_algo_kwargs.policy_kwargs.net_arch=[32, 32]",
            "name=run=2",
        ],
    )
    assert out == {
        "learn": {"save_freq": 5, "progress_bar": True},
        "inner_steps": 128,
        "meta_lr": 0.25,
        "seed": None,
        "rl_algo_kwargs": {"policy_kwargs": {"net_arch": [32, 32]}},
        "name": "run=2",
    }
    assert data == {"learn": {"save_freq": 1}, "inner_steps": 64}  # the input is left alone


def test_bad_overrides_say_how_to_write_them() -> None:
    with pytest.raises(ConfigError, match=r"--set 'inner_steps': write it as key=value"):
        apply_overrides({}, ["inner_steps"])
    with pytest.raises(
        ConfigError, match=r"inner_steps is 64, not a mapping: set inner_steps=\.\.\."
    ):
        apply_overrides({"inner_steps": 64}, ["inner_steps.x=1"])


def test_load_config_applies_overrides_before_validating(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert load_config(path, ["outer_steps=7"]).outer_steps == 7
    with pytest.raises(ConfigError) as info:
        load_config(path, ["outer_steps=0"])
    assert str(path) in str(info.value)
    assert info.value.problems[0].startswith("outer_steps: must be a positive integer, got 0")


def test_unreadable_or_non_mapping_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys to values, got list"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_tasks_per_call_takes_a_number_auto_or_guided() -> None:
    for value in (3, "auto", "guided"):
        config = RunConfig.from_dict(_with(tasks_per_call=value), source="ok.yaml")
        assert config.trainer_kwargs()["tasks_per_call"] == value
    problems = _problems(_with(tasks_per_call="guide"))
    assert len(problems) == 1 and problems[0].startswith("tasks_per_call:")
    assert "'guided'" in problems[0]
