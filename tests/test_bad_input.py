"""Bad input fails early with an error that names the fix, and nothing is folded in."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest
import torch as th
from conftest import cartpole_kwargs, weights_of

from distributed_reptile import InnerLearner, NonFiniteWeightsError, ReptileMetaRL, TaskGenerator
from distributed_reptile.tasks.families import make_cartpole_task


@pytest.mark.parametrize("name", ["task_batch_size", "inner_steps", "outer_steps", "num_workers"])
@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_non_positive_counts_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        ReptileMetaRL(**cartpole_kwargs(**{name: value}))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        ReptileMetaRL(**cartpole_kwargs(backend="dask"))


def test_rl_algorithm_that_is_not_sb3_is_refused():
    with pytest.raises(TypeError, match="SB3 algorithm class such as stable_baselines3.PPO"):
        ReptileMetaRL(**cartpole_kwargs(rl_algorithm="PPO"))


def test_generator_returning_wrong_shape_is_named():
    class TwoTuple:
        def reset_history(self) -> None:
            pass

        def get_task(self, meta_step: int, seed: Any = None):
            return gym.make("CartPole-v1"), {}

    with pytest.raises(TypeError, match=r"\(env, info, origin_meta_step\)"):
        ReptileMetaRL(**cartpole_kwargs(tasks_generator_cls=TwoTuple, tasks_generator_params={}))


def test_generator_returning_a_non_env_is_named():
    class NotAnEnv:
        def reset_history(self) -> None:
            pass

        def get_task(self, meta_step: int, seed: Any = None):
            return "CartPole-v1", {}, None

    with pytest.raises(TypeError, match="gymnasium.Env was expected"):
        ReptileMetaRL(**cartpole_kwargs(tasks_generator_cls=NotAnEnv, tasks_generator_params={}))


def _mixed_spaces(random_seed: int):
    if random_seed % 2:
        return gym.make("MountainCar-v0"), {"kind": "mountaincar"}
    return gym.make("CartPole-v1"), {"kind": "cartpole"}


def test_task_with_other_spaces_than_the_meta_policy_is_refused():
    tasks = [_mixed_spaces(0), _mixed_spaces(1)]
    kwargs = cartpole_kwargs(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"tasks": tasks, "sampling_method": "cyclic"},
        outer_steps=1,
        task_batch_size=2,
    )
    with ReptileMetaRL(**kwargs) as meta:
        before = weights_of(meta)
        with pytest.raises(ValueError, match="spaces that differ from the meta policy"):
            meta.learn()
        after = weights_of(meta)
    assert all(th.equal(before[k], after[k]) for k in before)


class NaNLearner(InnerLearner):
    """Produces NaN weights on odd meta steps."""

    def inner_adapt(self, task_model) -> None:
        super().inner_adapt(task_model)
        if self._job_meta_step % 2:
            with th.no_grad():
                next(task_model.policy.parameters()).fill_(float("nan"))

    def run(self, job, meta_weights):
        self._job_meta_step = job.spec.meta_step
        return super().run(job, meta_weights)


def test_non_finite_adapted_weights_are_never_folded_in():
    with ReptileMetaRL(
        **cartpole_kwargs(inner_learner_cls=NaNLearner, outer_steps=1, task_batch_size=2)
    ) as meta:
        before = weights_of(meta)
        with pytest.raises(NonFiniteWeightsError, match="meta_step=1.*on_nonfinite='skip'"):
            meta.learn()
        after = weights_of(meta)
        assert all(th.equal(before[k], after[k]) for k in before)
        assert meta.num_outer_steps == 0


def test_non_finite_tasks_can_be_skipped_instead():
    kwargs = cartpole_kwargs(
        inner_learner_cls=NaNLearner, outer_steps=1, task_batch_size=2, on_nonfinite="skip"
    )
    with ReptileMetaRL(**kwargs) as meta, pytest.warns(RuntimeWarning, match="Skipped"):
        meta.learn()
    record = meta.step_records[0]
    assert record["skipped_tasks"] == [1]
    assert all(th.isfinite(v).all() for v in weights_of(meta).values())


def test_save_freq_without_save_path_is_refused():
    with ReptileMetaRL(**cartpole_kwargs()) as meta, pytest.raises(ValueError, match="save_path"):
        meta.learn(save_freq=1)


def test_unknown_task_seed_mode_is_refused():
    with (
        ReptileMetaRL(**cartpole_kwargs()) as meta,
        pytest.raises(ValueError, match="task_seed_mode"),
    ):
        meta.learn(task_seed_mode="worker")


class Unpicklable(gym.Wrapper):
    def __reduce__(self):
        raise TypeError("this env holds a live handle")


class UnpicklableGenerator:
    def reset_history(self) -> None:
        pass

    def get_task(self, meta_step: int, seed: Any = None):
        return Unpicklable(gym.make("CartPole-v1")), {}, None


def test_env_that_cannot_be_pickled_gets_a_clear_error_on_ray(ray_session):
    with pytest.raises(TypeError, match="cannot be pickled.*task_callable"):
        ReptileMetaRL(
            **cartpole_kwargs(
                tasks_generator_cls=UnpicklableGenerator, tasks_generator_params={}, backend="ray"
            )
        )


def test_unpicklable_env_still_works_serially():
    with ReptileMetaRL(
        **cartpole_kwargs(
            tasks_generator_cls=UnpicklableGenerator,
            tasks_generator_params={},
            outer_steps=1,
            task_batch_size=1,
        )
    ) as meta:
        meta.learn()
    assert meta.num_outer_steps == 1


def test_failing_env_names_the_task_and_the_cause():
    class Exploding(gym.Wrapper):
        def step(self, action):
            raise RuntimeError("simulator crashed")

    def make(random_seed: int):
        env, info = make_cartpole_task(random_seed)
        return (Exploding(env) if random_seed >= 0 else env), info

    # the bootstrap env is built but never stepped, so construction succeeds
    with ReptileMetaRL(
        **cartpole_kwargs(tasks_generator_params={"task_callable": make}, outer_steps=1)
    ) as meta:
        with pytest.raises(RuntimeError, match=r"meta_step=0 .*simulator crashed"):
            meta.learn()
