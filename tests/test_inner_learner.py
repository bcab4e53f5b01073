"""InnerLearner jobs beyond training: per-job budgets and meta-test evaluation episodes."""

from __future__ import annotations

from conftest import SMALL_PPO
from stable_baselines3 import PPO

from distributed_reptile import InnerLearner, TaskGenerator, TaskJob
from distributed_reptile.tasks.families import make_cartpole_task
from distributed_reptile.weights import module_to_numpy


def _setup():
    spec = TaskGenerator(task_callable=make_cartpole_task, generator_seed=0).sample_spec(0)
    learner = InnerLearner(PPO, SMALL_PPO, inner_steps=128, device="cpu")
    weights = module_to_numpy(learner.build_model(spec.build_env()).policy)
    return spec, learner, weights


def test_evaluation_job_without_learning_reports_episodes_and_no_weights():
    spec, learner, weights = _setup()
    job = TaskJob(spec, task_seed=5, index=0, inner_steps=0, eval_episodes=3, return_weights=False)
    result = learner.run(job, weights)
    assert result.weights == {} and result.env_steps == 0
    assert len(result.eval_returns) == 3 and all(r > 0 for r in result.eval_returns)
    again = learner.run(job, weights)
    assert again.eval_returns == result.eval_returns  # same seed, same episodes


def test_per_job_budget_overrides_the_learner_budget_once():
    spec, learner, weights = _setup()
    short = learner.run(
        TaskJob(spec, task_seed=5, index=0, inner_steps=64, eval_episodes=2), weights
    )
    assert short.env_steps == 64 and len(short.eval_returns) == 2 and short.weights
    default = learner.run(TaskJob(spec, task_seed=5, index=0), weights)
    assert default.env_steps == 128 and default.eval_returns == []
