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
from distributed_reptile.evaluation import (
    adaptation_returns,
    build_eval_runner,
    evaluate_inits,
    held_out_specs,
    random_init_weights,
    resolve_budgets,
    save_report,
)
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


def test_metric_declarations_are_checked_with_the_fix() -> None:
    with pytest.raises(ValueError, match='"max".*"mean"'):
        Metric(lambda i: 0.0, reduce="sum")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="function of a step's info"):
        Metric(0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\{name: Metric\("):
        EpisodeMetrics(_Scripted(), {"success": lambda i: 0.0})  # type: ignore[dict-item]


def test_velocity_error_is_the_mean_absolute_velocity_error_of_the_rollout() -> None:
    """Hand-computed from the cheetah's positions: velocity = displacement / dt per step."""
    pytest.importorskip("mujoco")
    from distributed_reptile.tasks.families import make_halfcheetah_vel_task

    env, info = make_halfcheetah_vel_task(5, split="test", max_episode_steps=25)
    assert set(metrics_of(env)) == {"velocity_error"}
    target, dt = info["target_velocity"], env.unwrapped.dt
    rng = np.random.default_rng(1)
    for _ in range(2):  # a second episode is measured afresh
        env.reset(seed=int(rng.integers(1000)))
        x_before, errors, done, step_info = float(env.unwrapped.data.qpos[0]), [], False, {}
        while not done:
            _, _, terminated, truncated, step_info = env.step(env.action_space.sample())
            x_after = float(env.unwrapped.data.qpos[0])
            errors.append(abs((x_after - x_before) / dt - target))
            x_before, done = x_after, terminated or truncated
        assert len(errors) == 25
        assert step_info[INFO_KEY]["velocity_error"] == pytest.approx(np.mean(errors), rel=1e-9)
    env.close()


def test_metaworld_success_is_whether_the_episode_ever_solved_the_task() -> None:
    """Steering the hand to the goal solves reach-v3 (1.0); keeping still does not. Each episode's
    value is Meta-World's own flag, maximised over the episode's steps."""
    pytest.importorskip("metaworld")
    from distributed_reptile.tasks.families import make_metaworld_ml1_task

    env, _ = make_metaworld_ml1_task(0, split="test", env_name="reach-v3", max_episode_steps=60)
    assert set(metrics_of(env)) == {"success"}
    mw = env.unwrapped.mw_env

    def episode(steer: bool) -> tuple[float, list[float]]:
        obs, _ = env.reset(seed=0)
        flags: list[float] = []
        while True:
            move = np.clip(10 * (mw._target_pos - obs[:3]), -1, 1) if steer else np.zeros(3)
            obs, _, terminated, truncated, step_info = env.step(np.r_[move, 0.0])
            flags.append(float(step_info["success"]))
            if terminated or truncated:
                return step_info[INFO_KEY]["success"], flags

    solved, flags = episode(steer=True)
    assert solved == 1.0 == max(flags)
    idle, flags = episode(steer=False)
    assert idle in (0.0, 1.0) and idle == max(flags)
    assert idle < solved
    env.close()


# ---------------------------------------------------------------------------- through the evaluation
SCRIPTED_METRICS = {
    "success": Metric(lambda i: i["success"], reduce="max", description="solved at any step"),
    "error": Metric(lambda i: i["error"], higher_is_better=False, description="mean error"),
}


def make_scripted_task(
    random_seed: int, split: str = "train", metrics: bool = True
) -> tuple[gym.Env, dict[str, Any]]:
    """A task of four-step episodes, with (or without) declared episode metrics."""
    env: gym.Env = gym.wrappers.TimeLimit(_Scripted(), max_episode_steps=10)
    if metrics:
        env = EpisodeMetrics(env, SCRIPTED_METRICS)
    return env, {"split": split, "seed": random_seed}


SCRIPTED_PPO: dict[str, Any] = {"policy": "MlpPolicy", "n_steps": 8, "batch_size": 8, "n_epochs": 1}


def _evaluate_scripted(metrics: bool, out: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    env, _ = make_scripted_task(0, metrics=metrics)
    budgets = resolve_budgets(PPO(env=env, **SCRIPTED_PPO), rollouts=[0, 1])
    specs = held_out_specs(make_scripted_task, 3, task_params={"metrics": metrics})
    inits = {
        name: [random_init_weights(PPO, SCRIPTED_PPO, env, seed=s)] for s, name in enumerate("ab")
    }
    runner = build_eval_runner(PPO, SCRIPTED_PPO, backend="serial")
    try:
        report = evaluate_inits(runner, inits, specs, budgets, episodes=2, reference="a")
    finally:
        runner.close()
    return report, save_report(report, out)


def _png_width(path: Any) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk


def test_report_shows_each_declared_metric_with_its_direction(tmp_path) -> None:
    """Whatever the policy does, every episode is solved at step 2 (success 1) and its error is the
    mean of 1, 2, 3, 4; the report has both, per init and paired, in JSON, Markdown and the PNG."""
    with_metrics, paths = _evaluate_scripted(True, tmp_path / "with")
    plain, plain_paths = _evaluate_scripted(False, tmp_path / "plain")
    assert with_metrics["per_task"] == plain["per_task"]  # the returns do not change
    assert plain["metrics"] == {}
    assert "Episode" not in plain_paths["md"].read_text()

    metrics = json.loads(paths["json"].read_text())["metrics"]
    assert set(metrics) == {"success", "error"}
    expected = {"success": 1.0, "error": float(np.mean([1, 2, 3, 4]))}
    for name, value in expected.items():
        summary = metrics[name]
        assert summary["higher_is_better"] is SCRIPTED_METRICS[name].higher_is_better
        assert summary["reduce"] == SCRIPTED_METRICS[name].reduce
        assert np.array(summary["per_task"]["a"]).shape == (1, 3, 2)
        for init in ("a", "b"):
            assert np.all(np.array(summary["per_task"][init]) == value)
            assert [r["mean"] for r in summary["inits"][init]["budgets"]] == [value, value]
        assert [r["mean"] for r in summary["paired"]["a - b"]] == [0.0, 0.0]
    md = paths["md"].read_text()
    assert "Episode success: solved at any step (higher is better;" in md
    assert "Episode error: mean error (lower is better;" in md
    assert "| a - b (paired) |" in md
    # one panel more per metric than the two of the return
    assert _png_width(paths["png"]) == 2 * _png_width(plain_paths["png"])


def test_training_time_evaluation_records_the_meta_init_metrics(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distributed_reptile.evaluation import MetaEvalCallback

    callback = MetaEvalCallback(eval_freq=1, n_tasks=2, budgets=[0, 1], episodes=1)
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_scripted_task},
        rl_algorithm=PPO,
        rl_algo_kwargs=dict(SCRIPTED_PPO),
        inner_steps=8,
        outer_steps=1,
        task_batch_size=1,
        meta_lr=1.0,
        backend="serial",
        seed=0,
        tensorboard_logs=str(tmp_path / "tb"),
    ) as meta:
        meta.learn(callback=callback)
        record = meta.step_records[0]
    error = float(np.mean([1, 2, 3, 4]))
    assert record["eval"]["metrics"] == {"success": [1.0, 1.0], "error": [error, error]}
    events = EventAccumulator(str(next((tmp_path / "tb").iterdir())))
    events.Reload()
    assert events.Scalars("eval/meta_error_budget_1")[-1].value == pytest.approx(error)


def unwrapped_halfcheetah_vel(
    random_seed: int, split: str = "train", max_episode_steps: int = 200
) -> tuple[gym.Env, dict[str, Any]]:
    """The velocity family's task without its metric wrapper."""
    from distributed_reptile.tasks.families import make_halfcheetah_vel_task

    env, info = make_halfcheetah_vel_task(random_seed, split, max_episode_steps)
    assert isinstance(env, EpisodeMetrics)
    return env.env, info


def test_metrics_change_no_return_or_draw() -> None:
    """The same held-out HalfCheetah velocity tasks with and without the metric wrapper: adapted
    and evaluated, the episode returns are identical; only the wrapped ones report the error."""
    pytest.importorskip("mujoco")
    from distributed_reptile.tasks.families import make_halfcheetah_vel_task

    kwargs: dict[str, Any] = {"policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "n_epochs": 1}
    env, _ = make_halfcheetah_vel_task(0, max_episode_steps=16)
    budgets = resolve_budgets(PPO(env=env, **kwargs), rollouts=[0, 1])
    weights = random_init_weights(PPO, kwargs, env, seed=3)
    runner = build_eval_runner(PPO, kwargs, backend="serial")
    returns, found = {}, {}
    try:
        for make in (make_halfcheetah_vel_task, unwrapped_halfcheetah_vel):
            specs = held_out_specs(make, 2, task_params={"max_episode_steps": 16})
            found[make] = {}
            _, returns[make] = adaptation_returns(
                runner, weights, specs, budgets, episodes=2, metrics_out=found[make]
            )
    finally:
        runner.close()
    assert returns[make_halfcheetah_vel_task] == returns[unwrapped_halfcheetah_vel]
    assert found[unwrapped_halfcheetah_vel] == {}
    errors = found[make_halfcheetah_vel_task]["velocity_error"]
    assert errors.shape == (2, 2) and np.isfinite(errors).all() and (errors >= 0).all()


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
    "metaworld_push": (
        "distributed_reptile.tasks.families:make_metaworld_ml1_task",
        {"env_name": "push-v3", "max_episode_steps": 40},
        {"success"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_on_ray_and_evaluates_with_its_metrics(family, ray_session, tmp_path):
    """Tiny budgets: the command path works and reports the family's metrics, paired."""
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
        assert summary["higher_is_better"] is (metric == "success")
        assert f"Episode {metric}" in (out / "evaluation.md").read_text()
