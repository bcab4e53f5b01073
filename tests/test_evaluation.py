"""Meta-test evaluation: statistics against hand-computed values, the report, the CLI, the callback."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats
from stable_baselines3 import PPO

from distributed_reptile import ReptileMetaRL, TaskGenerator
from distributed_reptile.baselines import TaskSwitchingEnv, train_multitask
from distributed_reptile.evaluation import (
    Budgets,
    MetaEvalCallback,
    RunnersByStep,
    adaptation_returns,
    build_eval_runner,
    cli_main,
    evaluate_inits,
    held_out_specs,
    paired_difference,
    random_init_weights,
    resolve_budgets,
    select_adaptation_lr,
    student_t_ppf,
    summarize,
    t_interval,
)
from distributed_reptile.tasks.families import make_pointnav_task
from distributed_reptile.tasks.families.pointnav import PointNavEnv
from distributed_reptile.weights import module_to_numpy

TINY_PPO: dict[str, Any] = {
    "policy": "MlpPolicy",
    "n_steps": 100,
    "batch_size": 50,
    "n_epochs": 5,
    "learning_rate": 3e-3,
    "policy_kwargs": {"net_arch": [16, 16]},
}


def make_corner_goal_task(random_seed: int, split: str = "train") -> tuple[gym.Env, dict[str, Any]]:
    """Point navigation whose goals all lie near (0.35, 0.35): a few outer steps learn to go there."""
    rng = np.random.default_rng([int(random_seed), 0 if split == "train" else 1])
    goal = 0.35 + rng.uniform(-0.05, 0.05, size=2)
    env = gym.wrappers.TimeLimit(PointNavEnv(goal=goal), max_episode_steps=20)
    return env, {"goal": goal.tolist(), "split": split}


# ---------------------------------------------------------------------------- statistics
def test_t_interval_equals_the_hand_computed_interval():
    out = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sample std sqrt(2.5), t(0.975, 4) = 2.7764451052: half-width 2.7764451052 * sqrt(2.5 / 5)
    assert out["mean"] == pytest.approx(3.0)
    assert out["std"] == pytest.approx(math.sqrt(2.5))
    assert out["half_width"] == pytest.approx(2.7764451052 * math.sqrt(0.5), rel=1e-9)
    assert out["ci_low"] == pytest.approx(3.0 - 1.9632432, abs=1e-6)
    assert out["ci_high"] == pytest.approx(3.0 + 1.9632432, abs=1e-6)
    assert out["n"] == 5


@pytest.mark.parametrize("df", [1, 2, 4, 9, 19, 59, 299])
@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995])
def test_student_t_quantile_matches_scipy(df, q):
    assert student_t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9, abs=1e-12)
    assert student_t_ppf(1 - q, df) == pytest.approx(stats.t.ppf(1 - q, df), rel=1e-9, abs=1e-12)


def test_t_interval_with_one_value_has_no_width_and_refuses_nan():
    one = t_interval([4.0])
    assert one["mean"] == 4.0 and math.isnan(one["half_width"])
    with pytest.raises(ValueError, match="NaN"):
        t_interval([1.0, float("nan")])


def test_paired_difference_says_whether_the_interval_excludes_zero():
    clear = paired_difference([10.0, 11.0, 12.0, 13.0], [1.0, 1.5, 2.0, 2.5])
    assert clear["excludes_zero"] and clear["sign"] == 1
    unclear = paired_difference([1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0])
    assert not unclear["excludes_zero"] and unclear["sign"] == 0
    with pytest.raises(ValueError, match="one value of each per unit"):
        paired_difference([1.0, 2.0], [1.0])


# Per-task returns (seeds x tasks x budgets) whose statistics are worked out by hand below.
META = np.array(
    [[[-10, -5], [-20, -8], [-30, -12]], [[-12, -6], [-18, -9], [-33, -10]]], dtype=float
)
RANDOM = np.array(
    [[[-11, -10], [-21, -19], [-29, -25]], [[-10, -9], [-19, -15], [-30, -28]]], dtype=float
)
MULTITASK = np.array(
    [[[-10, -9], [-20, -18], [-31, -30]]], dtype=float
)  # one seed, paired with each


def _scipy_interval(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(half)


def test_summarize_gives_the_hand_computed_means_intervals_and_paired_differences():
    budgets = Budgets(env_steps=(0, 512), rollouts=(0, 1), rollout_steps=512)
    report = summarize({"meta": META, "random": RANDOM, "multitask": MULTITASK}, budgets)

    assert report["n_tasks"] == 3 and report["reference"] == "meta"
    assert [r["label"] for r in report["inits"]["meta"]["budgets"]] == ["budget_0", "budget_1"]
    assert report["inits"]["meta"]["n_seeds"] == 2 and report["inits"]["multitask"]["n_seeds"] == 1

    # meta at budget 1: units (seed, task) = -5, -8, -12, -6, -9, -10
    row = report["inits"]["meta"]["budgets"][1]
    mean, half = _scipy_interval([-5, -8, -12, -6, -9, -10])
    assert row["mean"] == pytest.approx(-50 / 6) == pytest.approx(mean)
    assert row["half_width"] == pytest.approx(half, rel=1e-9)
    assert row["ci_low"] == pytest.approx(mean - half) and row["ci_high"] == pytest.approx(
        mean + half
    )
    assert row["n"] == 6
    assert row["seed_means"] == pytest.approx([-25 / 3, -25 / 3])

    # meta - random at budget 1, unit by unit: 5, 11, 13, 3, 6, 18
    diff = report["paired"]["meta - random"][1]
    mean, half = _scipy_interval([5, 11, 13, 3, 6, 18])
    assert diff["mean"] == pytest.approx(56 / 6) and diff["half_width"] == pytest.approx(
        half, rel=1e-9
    )
    assert diff["excludes_zero"] and diff["sign"] == 1
    # across seeds: seed means of the differences 29/3 and 27/3
    mean, half = _scipy_interval([29 / 3, 27 / 3])
    assert diff["across_seeds"]["mean"] == pytest.approx(mean)
    assert diff["across_seeds"]["half_width"] == pytest.approx(half, rel=1e-9)

    # the single multitask seed is paired with both meta seeds: 4, 10, 18, 3, 9, 20
    mt = report["paired"]["meta - multitask"][1]
    mean, half = _scipy_interval([4, 10, 18, 3, 9, 20])
    assert mt["mean"] == pytest.approx(64 / 6) and mt["half_width"] == pytest.approx(half, rel=1e-9)

    # gain from adaptation of meta: budget 1 minus budget 0 per unit: 5, 12, 18, 6, 9, 23
    gain = report["inits"]["meta"]["adaptation_gain"][1]
    mean, half = _scipy_interval([5, 12, 18, 6, 9, 23])
    assert gain["mean"] == pytest.approx(73 / 6) and gain["half_width"] == pytest.approx(
        half, rel=1e-9
    )
    assert report["inits"]["meta"]["adaptation_gain"][0]["mean"] == 0.0
    assert np.array_equal(np.asarray(report["per_task"]["random"]), RANDOM)


def test_summarize_refuses_inits_that_cannot_be_paired():
    budgets = Budgets(env_steps=(0, 512))
    three_seeds = np.concatenate([RANDOM, RANDOM[:1]])
    with pytest.raises(ValueError, match="same number"):
        summarize({"meta": META, "random": three_seeds}, budgets)
    with pytest.raises(ValueError, match="reference"):
        summarize({"random": RANDOM}, budgets)


def test_budgets_are_rollouts_of_the_learner_or_explicit_env_steps():
    env, _ = make_pointnav_task(0)
    model = PPO(env=env, device="cpu", **TINY_PPO)
    default = resolve_budgets(model)
    assert default.rollouts == (0, 1, 2, 4) and default.env_steps == (0, 100, 200, 400)
    assert resolve_budgets(model, env_steps=[0, 300]).rollouts == (0, 3)
    assert resolve_budgets(model, env_steps=[0, 150]).rollouts is None
    with pytest.raises(ValueError, match="not both"):
        resolve_budgets(model, rollouts=[1], env_steps=[100])

    class NoRollouts:
        pass

    with pytest.raises(ValueError, match="env steps"):
        resolve_budgets(NoRollouts())


def test_held_out_specs_draw_the_test_split():
    specs = held_out_specs("pointnav", 4, seed=3)
    assert [s.random_seed for s in specs] == [3, 4, 5, 6]
    assert all(s.info["split"] == "test" for s in specs)
    assert specs[0].info == make_pointnav_task(3, split="test")[1]
    with pytest.raises(ValueError, match="Unknown task family"):
        held_out_specs("no_such_family", 2)


# ---------------------------------------------------------------------------- the baseline
def test_task_switching_env_draws_a_new_training_task_every_episode():
    env = TaskSwitchingEnv(make_pointnav_task, seed=0)
    goals = []
    for _ in range(4):
        env.reset()
        goals.append(tuple(env.task_info["goal"]))
        assert env.task_info["split"] == "train"
    assert env.tasks_drawn == 4 and len(set(goals)) == 4
    env.close()


def test_train_multitask_runs_the_requested_env_steps_on_switching_tasks():
    model = train_multitask("pointnav", PPO, TINY_PPO, total_timesteps=300, seed=1)
    assert model.num_timesteps == 300
    assert model.get_env().get_attr("tasks_drawn")[0] >= 3  # 100-step episodes


# ---------------------------------------------------------------------------- evaluation runs
def _trainer(**overrides: Any) -> ReptileMetaRL:
    kwargs: dict[str, Any] = {
        "tasks_generator_cls": TaskGenerator,
        "tasks_generator_params": {"task_callable": make_corner_goal_task},
        "rl_algorithm": PPO,
        "rl_algo_kwargs": dict(TINY_PPO),
        "inner_steps": 200,
        "outer_steps": 8,
        "task_batch_size": 4,
        "meta_lr": 1.0,
        "backend": "serial",
        "seed": 0,
    }
    kwargs.update(overrides)
    return ReptileMetaRL(**kwargs)


def test_a_meta_init_trained_a_few_steps_beats_a_random_init():
    with _trainer() as meta:
        random_init = {
            "random": [random_init_weights(PPO, TINY_PPO, make_corner_goal_task(0)[0], seed=5)]
        }
        meta.learn()
        specs = held_out_specs(make_corner_goal_task, 5)
        budgets = resolve_budgets(meta.meta_algo, rollouts=[0, 1])
        report = evaluate_inits(
            meta.runner,
            {"meta": [module_to_numpy(meta.meta_policy)], **random_init},
            specs,
            budgets,
            episodes=1,
        )
    for diff in report["paired"]["meta - random"]:
        # staying at the origin costs about -11; the meta-init has learned where the goals are
        assert diff["ci_low"] > 2.0, diff
    assert (
        report["inits"]["meta"]["budgets"][0]["mean"]
        > report["inits"]["random"]["budgets"][0]["mean"] + 3
    )


def test_evaluation_on_ray_workers_equals_the_serial_evaluation(ray_session):
    env, _ = make_pointnav_task(0)
    weights = random_init_weights(PPO, TINY_PPO, env, seed=3)
    specs = held_out_specs("pointnav", 3)
    budgets = Budgets(env_steps=(0, 100), rollouts=(0, 1), rollout_steps=100)
    serial = build_eval_runner(PPO, TINY_PPO, backend="serial")
    ray_runner = build_eval_runner(PPO, TINY_PPO, backend="ray", num_workers=2)
    try:
        on_ray, raw_ray = adaptation_returns(ray_runner, weights, specs, budgets, episodes=2)
    finally:
        ray_runner.close()
    in_process, raw_serial = adaptation_returns(serial, weights, specs, budgets, episodes=2)
    assert np.array_equal(on_ray, in_process)
    assert raw_ray == raw_serial


def test_cli_main_writes_the_json_and_png_report_of_a_checkpoint(tmp_path: Path):
    with _trainer(
        tasks_generator_params={"task_callable": make_pointnav_task},
        outer_steps=2,
        task_batch_size=2,
        inner_steps=100,
    ) as meta:
        meta.learn(save_path=str(tmp_path / "ckpt"), save_prefix="meta")
    checkpoint = tmp_path / "ckpt" / "meta_outer_2"
    baseline = train_multitask("pointnav", PPO, TINY_PPO, total_timesteps=200, seed=0)
    baseline.save(tmp_path / "multitask.zip")

    out = tmp_path / "eval"
    code = cli_main(
        [
            str(checkpoint),
            "--baseline",
            str(tmp_path / "multitask.zip"),
            "--backend",
            "serial",
            "--tasks",
            "3",
            "--episodes",
            "1",
            "--budgets",
            "0",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "evaluation.png").stat().st_size > 10_000
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["inits"]) == {"meta", "random", "multitask"}
    assert set(report["paired"]) == {"meta - random", "meta - multitask"}
    assert report["budgets"] == {"env_steps": [0, 100], "rollouts": [0, 1], "rollout_steps": 100}
    assert report["settings"]["task_seeds"] == [0, 1, 2]
    assert report["metadata"]["family"] == "pointnav"
    for row in report["inits"]["meta"]["budgets"]:
        assert row["n"] == 3 and row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert "| meta (1 seed(s)) |" in (out / "evaluation.md").read_text()


def test_meta_eval_callback_records_the_evaluation_and_logs_it_to_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = MetaEvalCallback(
        eval_freq=2, n_tasks=2, budgets=[0, 1], episodes=1, log_path=str(tmp_path / "evals.json")
    )
    with _trainer(outer_steps=4, task_batch_size=2, tensorboard_logs=str(tmp_path / "tb")) as meta:
        meta.learn(callback=callback)
        records = meta.step_records
    assert [("eval" in r) for r in records] == [False, True, False, True]
    evaluation = records[1]["eval"]
    assert evaluation["budgets"] == ["budget_0", "budget_1"]
    assert (
        len(evaluation["meta"]) == 2
        and len(evaluation["random"]) == 2
        and len(evaluation["meta - random"]) == 2
    )
    assert [r["outer_step"] for r in callback.reports] == [2, 4]
    assert len(json.loads((tmp_path / "evals.json").read_text())) == 2
    run_dir = next((tmp_path / "tb").iterdir())
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "eval/meta_return_budget_1",
        "eval/random_return_budget_0",
        "eval/meta_minus_random_budget_1",
    } <= tags
    assert [e.step for e in events.Scalars("eval/meta_return_budget_1")] == [2, 4]
    last = records[3]["eval"]["meta"][1]
    assert events.Scalars("eval/meta_return_budget_1")[-1].value == pytest.approx(last, rel=1e-6)


@pytest.mark.parametrize(
    ("schedule", "steps"),
    [("constant", (0, 100, 200, 400)), ("linear", (0, 100, 200, 400)), ("constant", (0, 50, 100))],
)
def test_budgets_along_one_adaptation_run_equal_separate_runs(schedule, steps):
    """Returns after each budget from one job equal those of separate jobs, bit for bit: along
    one run where the learner allows it, else in separate runs inside the job (a linear
    learning-rate schedule depends on the run's length; a budget of half a rollout runs a whole
    one, so 50 then 50 more would run 200 steps where a separate run of 100 runs 100)."""
    from stable_baselines3.common.utils import get_linear_fn

    from distributed_reptile import InnerLearner, TaskJob

    kwargs = dict(TINY_PPO)
    if schedule == "linear":
        kwargs["learning_rate"] = get_linear_fn(3e-3, 1e-4, 1.0)
    env, _ = make_pointnav_task(0)
    weights = random_init_weights(PPO, kwargs, env, seed=3)
    spec = held_out_specs("pointnav", 1)[0]
    learner = InnerLearner(PPO, kwargs, inner_steps=100)
    job = TaskJob(spec=spec, task_seed=11, index=0, eval_episodes=2, eval_budgets=steps)
    chained = learner.run(job, weights).eval_returns_by_budget
    assert learner.can_chain(learner.model, job) == (schedule == "constant" and 50 not in steps)
    separate = [
        learner.run(
            TaskJob(spec=spec, task_seed=11, index=0, inner_steps=n, eval_episodes=2), weights
        ).eval_returns
        for n in steps
    ]
    assert chained == separate
    assert len({tuple(r) for r in separate}) > 1  # adaptation changed the returns


# ---------------------------------------------------------------------------- adaptation step
def test_each_init_adapts_with_the_step_that_scores_best_on_training_tasks():
    env, _ = make_pointnav_task(0)
    inits = {
        "a": [random_init_weights(PPO, TINY_PPO, env, seed=3)],
        "b": [random_init_weights(PPO, TINY_PPO, env, seed=4)],
    }
    train = held_out_specs("pointnav", 2, split="train")
    budgets = Budgets(env_steps=(0, 100), rollouts=(0, 1), rollout_steps=100)
    opened: list[float] = []

    def make_runner(lr: float):
        opened.append(lr)
        return build_eval_runner(PPO, {**TINY_PPO, "learning_rate": lr}, backend="serial")

    held_out = held_out_specs("pointnav", 2)
    selection = select_adaptation_lr(
        make_runner, inits, train, budgets, [3e-2, 1e-3], episodes=1, held_out=held_out
    )
    assert opened == [3e-2, 1e-3] and selection["overlaps_held_out"] == 0
    positive = Budgets(env_steps=(100,), rollouts=(1,), rollout_steps=100)
    for name, (weights,) in inits.items():
        # recomputed by hand: each step's mean return after adaptation, budget 0 left out
        by_hand = {
            lr: float(
                adaptation_returns(make_runner(lr), weights, train, positive, 1, seed=1)[0].mean()
            )
            for lr in (3e-2, 1e-3)
        }
        assert by_hand[3e-2] != by_hand[1e-3]  # the step changes the adaptation
        assert selection["scores"][name] == {repr(lr): v for lr, v in by_hand.items()}
        assert selection["chosen"][name] == max(by_hand, key=by_hand.__getitem__)
    # the held-out evaluation with one runner per init equals each init evaluated on its own
    runners = {name: make_runner(lr) for name, lr in selection["chosen"].items()}
    both = evaluate_inits(runners, inits, held_out, budgets, episodes=1, reference="a")
    for name in inits:
        alone = evaluate_inits(
            runners[name], {name: inits[name]}, held_out, budgets, episodes=1, reference=name
        )
        assert both["episode_returns"][name] == alone["episode_returns"][name]


def test_choosing_the_step_on_held_out_tasks_is_counted_and_warned_about():
    env, _ = make_pointnav_task(0)
    inits = {"a": [random_init_weights(PPO, TINY_PPO, env, seed=3)]}
    specs = held_out_specs("pointnav", 2)
    budgets = Budgets(env_steps=(0, 100), rollouts=(0, 1), rollout_steps=100)
    with pytest.warns(UserWarning, match="2 of the 2 tasks .* equal held-out tasks"):
        selection = select_adaptation_lr(
            lambda lr: build_eval_runner(PPO, {**TINY_PPO, "learning_rate": lr}),
            inits,
            specs,
            budgets,
            [3e-3],
            episodes=1,
            held_out=specs,
        )
    assert selection["overlaps_held_out"] == 2


class _Recorded:
    def __init__(self, lr: float, log: list[str]) -> None:
        self.lr, self.log = lr, log
        log.append(f"open {lr}")

    def close(self) -> None:
        self.log.append(f"close {self.lr}")


def test_runners_by_step_keeps_one_step_s_runner_open_at_a_time():
    log: list[str] = []
    runners = RunnersByStep(lambda lr: _Recorded(lr, log), {"a": 0.1, "b": 0.1, "c": 0.01})
    assert list(runners) == ["a", "b", "c"] and len(runners) == 3
    with runners:
        assert [runners[n].lr for n in ("a", "a", "b", "c", "a")] == [0.1, 0.1, 0.1, 0.01, 0.1]
    assert log == ["open 0.1", "close 0.1", "open 0.01", "close 0.01", "open 0.1", "close 0.1"]


@pytest.mark.parametrize(
    ("candidates", "budget_steps", "message"),
    [
        ([], (0, 100), "non-empty list of finite numbers > 0"),
        ([0.0], (0, 100), "non-empty list of finite numbers > 0"),
        ([float("nan")], (0, 100), "non-empty list of finite numbers > 0"),
        ([1e-3, 1e-3], (0, 100), "repeat"),
        ([1e-3], (0,), "needs a budget above 0"),
    ],
)
def test_choosing_the_step_refuses_bad_candidates_and_budgets(candidates, budget_steps, message):
    budgets = Budgets(env_steps=budget_steps)
    with pytest.raises(ValueError, match=message):
        select_adaptation_lr(
            lambda lr: pytest.fail("no runner may open"),
            {"a": [{}]},
            held_out_specs("pointnav", 1, split="train"),
            budgets,
            candidates,
        )


def test_evaluating_with_one_runner_per_init_needs_a_runner_for_each():
    runner = build_eval_runner(PPO, TINY_PPO, backend="serial")
    budgets = Budgets(env_steps=(0,))
    with pytest.raises(ValueError, match=r"No runner for the initialisation\(s\) \['b'\]"):
        evaluate_inits({"a": runner}, {"a": [{}], "b": [{}]}, [], budgets, reference="a")


def test_cli_adapts_each_init_with_the_step_chosen_on_training_tasks(tmp_path: Path, ray_session):
    with _trainer(
        tasks_generator_params={"task_callable": make_pointnav_task},
        rl_algo_kwargs={**TINY_PPO, "device": "cpu"},
        outer_steps=1,
        task_batch_size=2,
        inner_steps=100,
    ) as meta:
        meta.learn(save_path=str(tmp_path / "ckpt"), save_prefix="meta")
        meta_weights = module_to_numpy(meta.meta_policy)
    out = tmp_path / "eval"
    # 3 workers on the session's 4 CPUs: the trainer's must stop before each step's start
    argv = [str(tmp_path / "ckpt" / "meta_outer_1"), "--backend", "ray", "--num-workers", "3"]
    argv += ["--tasks", "2", "--episodes", "1", "--budgets", "0", "1", "--out", str(out)]
    argv += ["--adapt-lrs", "0.03", "--select-tasks", "2", "--select-episodes", "1"]
    assert cli_main(argv) == 0
    report = json.loads((out / "evaluation.json").read_text())
    selection = report["metadata"]["adaptation_lr_selection"]
    assert selection["split"] == "train" and set(selection["chosen"]) == {"meta", "random"}
    assert selection["chosen"] == {"meta": 0.03, "random": 0.03}
    assert "Adaptation learning rate of each initialisation" in (out / "evaluation.md").read_text()
    # the meta-init's held-out returns are those of an adaptation with the chosen step (the
    # trainer's own is 3e-3)
    by_hand = evaluate_inits(
        build_eval_runner(PPO, {**TINY_PPO, "learning_rate": 0.03}, backend="serial"),
        {"meta": [meta_weights]},
        held_out_specs("pointnav", 2),
        Budgets(env_steps=(0, 100), rollouts=(0, 1), rollout_steps=100),
        episodes=1,
    )
    assert report["episode_returns"]["meta"] == by_hand["episode_returns"]["meta"]
