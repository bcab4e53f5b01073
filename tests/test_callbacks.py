"""Meta-level callbacks: hook order, clean stops with the final checkpoint, built-ins; envs closed."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest
from conftest import cartpole_kwargs

from distributed_reptile import ReptileMetaRL
from distributed_reptile.callbacks import (
    CallbackList,
    CheckpointCallback,
    MetaCallback,
    StopOnStepRecord,
    StopOnWallClock,
)
from distributed_reptile.checkpoint import list_checkpoints
from distributed_reptile.tasks.families import make_cartpole_task


class Recorder(MetaCallback):
    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.calls: list[Any] = []
        self.stop_after = stop_after

    def _on_training_start(self) -> None:
        self.calls.append("start")

    def _on_outer_step_start(self, outer_step: int) -> None:
        self.calls.append(("step_start", outer_step))

    def _on_outer_step_end(self, record: dict[str, Any]) -> bool:
        self.calls.append(
            ("step_end", record["outer_step"], record["update_norm"] > 0, len(record["tasks"]))
        )
        return self.stop_after is None or record["outer_step"] < self.stop_after

    def _on_training_end(self) -> None:
        self.calls.append("end")


def test_hooks_run_in_order_and_see_the_step_record():
    rec = Recorder()
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=2)) as meta:
        meta.learn(callback=rec)
    assert rec.calls == [
        "start",
        ("step_start", 0),
        ("step_end", 1, True, 4),
        ("step_start", 1),
        ("step_end", 2, True, 4),
        "end",
    ]
    assert rec.trainer is meta


def test_returning_false_stops_cleanly_and_writes_the_final_checkpoint(tmp_path):
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=5)) as meta:
        meta.learn(callback=[Recorder(stop_after=2)], save_path=str(tmp_path), save_prefix="s")
        assert meta.num_outer_steps == 2
    assert [p.name for p in list_checkpoints(tmp_path, "s")] == ["s_outer_2"]


def test_stop_on_wall_clock_and_on_step_record():
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=5)) as meta:
        meta.learn(callback=StopOnWallClock(1e-6))
        assert meta.num_outer_steps == 1
        meta.learn(callback=CallbackList([StopOnStepRecord("outer_step", 3)]))
        assert meta.num_outer_steps == 3
        meta.learn(callback=StopOnStepRecord("outer_step", 1, mode="min"))
        assert meta.num_outer_steps == 1
        with pytest.raises(KeyError, match="no 'not_a_key'"):
            meta.learn(callback=StopOnStepRecord("not_a_key", 1.0))


def test_checkpoint_callback_and_save_freq_agree(tmp_path):
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=4, task_batch_size=1, inner_steps=64)) as meta:
        meta.learn(callback=CheckpointCallback(2, str(tmp_path / "cb"), "m"), save_final=False)
        meta.learn(save_freq=2, save_path=str(tmp_path / "sf"), save_prefix="m", save_final=False)
    names = [p.name for p in list_checkpoints(tmp_path / "cb", "m")]
    assert (
        names
        == ["m_outer_2", "m_outer_4"]
        == [p.name for p in list_checkpoints(tmp_path / "sf", "m")]
    )


def test_a_callback_of_the_wrong_kind_is_refused():
    with (
        ReptileMetaRL(**cartpole_kwargs(outer_steps=1)) as meta,
        pytest.raises(TypeError, match="MetaCallback"),
    ):
        meta.learn(callback=[lambda record: True])


CLOSED: list[int] = []
OPENED: list[int] = []


class Tracked(gym.Wrapper):
    def __init__(self, env: gym.Env, fail: bool) -> None:
        super().__init__(env)
        self.fail = fail
        OPENED.append(id(self))

    def step(self, action):
        if self.fail:
            raise RuntimeError("env failure")
        return super().step(action)

    def close(self) -> None:
        CLOSED.append(id(self))
        super().close()


def _tracked_task(random_seed: int, fail: bool = False):
    env, info = make_cartpole_task(random_seed)
    return Tracked(env, fail), info


def test_every_task_env_is_closed_also_on_failure():
    OPENED.clear()
    CLOSED.clear()
    with ReptileMetaRL(
        **cartpole_kwargs(outer_steps=2, tasks_generator_params={"task_callable": _tracked_task})
    ) as meta:
        meta.learn()
    assert len(OPENED) > 8 and sorted(OPENED) == sorted(CLOSED)
    OPENED.clear()
    CLOSED.clear()
    params = {"task_callable": _tracked_task, "task_callable_params": {"fail": True}}
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=1, tasks_generator_params=params)) as meta:
        with pytest.raises(RuntimeError, match="env failure"):
            meta.learn()
    assert sorted(OPENED) == sorted(CLOSED)


def test_eval_freq_runs_the_meta_test_evaluation_into_the_step_record():
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=2, task_batch_size=2)) as meta:
        meta.learn(eval_freq=2, eval_kwargs={"n_tasks": 2, "budgets": [0, 1], "episodes": 1})
    assert "eval" not in meta.step_records[0]
    assert "eval" in meta.step_records[1]
