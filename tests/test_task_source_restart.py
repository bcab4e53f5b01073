"""A task-source actor that dies (killed as an OOM kill or an operator would) is rebuilt with
nothing lost: the run ends with the meta weights and the task history of an undisturbed run, bit
for bit. A source that cannot be rebuilt ends the run with a RunInterruptedError that names what
died, the outer step, the last checkpoint and how to resume.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import pytest
import torch as th
from conftest import assert_same_weights, cartpole_kwargs, weights_of

import distributed_reptile.algorithms.base as algorithms_base
from distributed_reptile import MetaCallback, ReptileMetaRL, RunInterruptedError, TaskGenerator
from distributed_reptile.errors import TaskSourceLostError
from distributed_reptile.execution.failures import lost_process, raise_if_interrupted
from distributed_reptile.runners.base import TaskFailedError
from distributed_reptile.tasks import remote
from distributed_reptile.tasks.families import make_cartpole_task
from distributed_reptile.tasks.remote import make_remote_task_source
from distributed_reptile.tasks.spec import TaskSpec

#: Five outer steps of two 64-step PPO tasks on one Ray worker; revisits make the history change
#: in place, not only grow.
RUN: dict[str, Any] = {
    "inner_steps": 64,
    "outer_steps": 5,
    "task_batch_size": 2,
    "backend": "ray",
    "num_workers": 1,
    "tasks_generator_params": {"task_callable": make_cartpole_task, "revisit_ratio": 0.5},
}
#: Outer steps drawn ahead per call in this module (8 in a run): two per call, so that five outer
#: steps see draws ahead start, be used up and start again.
DRAW_AHEAD = 2


@pytest.fixture(scope="module", autouse=True)
def short_draw_ahead():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(algorithms_base, "DRAW_AHEAD_STEPS", DRAW_AHEAD)
        yield


@pytest.fixture(scope="module")
def reference(ray_session) -> tuple[dict[str, th.Tensor], list[dict[str, Any]] | None]:
    """The undisturbed Ray run: its meta weights and the tasks it drew."""
    with ReptileMetaRL(**cartpole_kwargs(**RUN)) as meta:
        meta.learn()
        return weights_of(meta), meta.task_source.history()


class KillTaskSource(MetaCallback):
    """Kills the task-source actor before outer steps ``before`` (0-based) start and after
    ``after`` outer steps are done."""

    def __init__(self, before: tuple[int, ...] = (), after: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.before, self.after = before, after
        self.kills = 0

    def kill(self) -> None:
        import ray

        assert self.trainer is not None
        actor = ray.get_actor(self.trainer.task_source.name)
        ray.kill(actor)
        self.kills += 1
        # ray.kill returns before the actor is gone: wait until a call fails, so the next draw
        # meets a dead actor whatever the machine's load
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=5)
            except ray.exceptions.RayActorError:
                return
            except ray.exceptions.GetTimeoutError:
                pass
            time.sleep(0.05)
        raise AssertionError("the killed task-source actor still answers after 30 s")

    def _on_outer_step_start(self, outer_step: int) -> None:
        if outer_step in self.before:
            self.kill()

    def _on_outer_step_end(self, record: Any) -> bool:
        assert self.trainer is not None
        if self.trainer.num_outer_steps in self.after:
            self.kill()
        return True


class SlowDraws(TaskGenerator):
    """TaskGenerator (the same draws) that takes ``delay`` seconds to draw ``slow_meta_steps``."""

    def __init__(self, slow_meta_steps: list[int], delay: float, **params: Any) -> None:
        super().__init__(**params)
        self.slow_meta_steps, self.delay = list(slow_meta_steps), float(delay)

    def sample_spec(self, meta_step: int, seed: int | None = None) -> TaskSpec:
        if meta_step in self.slow_meta_steps:
            time.sleep(self.delay)
        return super().sample_spec(meta_step, seed=seed)


class NoStateGenerator:
    """A user generator without state_dict() / load_state_dict() (nor draws ahead)."""

    def __init__(self, **params: Any) -> None:
        self.inner = TaskGenerator(task_callable=make_cartpole_task, generator_seed=0, **params)

    def sample_spec(self, meta_step: int, seed: int | None = None) -> TaskSpec:
        return self.inner.sample_spec(meta_step, seed=seed)

    def reset_history(self) -> None:
        self.inner.reset_history()


class DiesAtMetaStep(TaskGenerator):
    """A TaskGenerator whose process exits whenever it draws ``fatal_meta_step``."""

    def __init__(self, fatal_meta_step: int, **params: Any) -> None:
        super().__init__(**params)
        self.fatal_meta_step = fatal_meta_step

    def sample_spec(self, meta_step: int, seed: int | None = None) -> TaskSpec:
        if meta_step == self.fatal_meta_step:
            os._exit(1)
        return super().sample_spec(meta_step, seed=seed)


def rebuild_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == remote.__name__]


# ---------------------------------------------------------------------- sources that are rebuilt


def test_task_source_killed_between_outer_steps_is_rebuilt_and_the_run_matches(
    ray_session, reference, caplog
):
    caplog.set_level(logging.WARNING, logger=remote.__name__)
    # after outer step 1 (the next draw ahead is then asked of the dead actor) and after outer
    # step 4 (the actor is next called to read the history, at the end)
    killer = KillTaskSource(after=(1, 4))
    with ReptileMetaRL(**cartpole_kwargs(**RUN)) as meta:
        first_name = meta.task_source.name
        meta.learn(callback=killer)
        assert killer.kills == 2
        assert meta.num_outer_steps == RUN["outer_steps"]
        assert_same_weights(weights_of(meta), reference[0])
        assert meta.task_source.history() == reference[1]
        source: Any = meta.task_source
        assert source.rebuilds == 2
        assert source.name == first_name  # a dead actor's name is free: the new one takes it
    lines = rebuild_lines(caplog)
    assert len(lines) == 2, lines
    assert f"The task source (Ray actor {first_name}) was lost while" in lines[0]
    assert "ActorDiedError" in lines[0] and "rebuilding it from its state after draw" in lines[0]
    assert "while drawing the tasks of meta steps 6-7" in lines[0]
    assert "drawing again the 2 outer steps it had drawn ahead" in lines[0]
    assert "while reading the task history" in lines[1]


def test_task_source_killed_with_draws_ahead_pending_is_rebuilt_and_the_run_matches(
    ray_session, reference, caplog, tmp_path
):
    """Killed while it draws steps ahead (the draw is slow: the kill lands during it), and,
    with checkpoints every step, while unused steps drawn ahead are held."""
    caplog.set_level(logging.WARNING, logger=remote.__name__)
    b = RUN["task_batch_size"]
    slow = [3 * b]  # the first task of outer step 3 (0-based), drawn ahead during outer step 2
    params = {**RUN["tasks_generator_params"], "slow_meta_steps": slow, "delay": 1.0}
    killed_after_prefetch: list[list[int]] = []
    kwargs = {**RUN, "tasks_generator_cls": SlowDraws, "tasks_generator_params": params}
    with ReptileMetaRL(**cartpole_kwargs(**kwargs)) as meta:
        source: Any = meta.task_source
        prefetch = source.prefetch

        def prefetch_then_kill(steps: list[tuple[list[int], list[int | None]]]) -> None:
            prefetch(steps)
            if steps and steps[0][0][0] == slow[0] and not killed_after_prefetch:
                ray_session.kill(ray_session.get_actor(source.name))
                killed_after_prefetch.append(steps[0][0])

        source.prefetch = prefetch_then_kill
        # before outer step 1: its steps drawn ahead (1 and 2) are held and unused; the
        # checkpoint after it finds the actor dead with step 2 drawn ahead and unused
        killer = KillTaskSource(before=(1,))
        meta.learn(callback=killer, save_freq=1, save_path=str(tmp_path / "ckpt"))
        assert killed_after_prefetch == [[slow[0], slow[0] + 1]]
        assert_same_weights(weights_of(meta), reference[0])
        assert meta.task_source.history() == reference[1]
        assert source.rebuilds == 2
    lines = rebuild_lines(caplog)
    assert len(lines) == 2, lines
    # the checkpoint after outer step 2 (1-based) finds the actor dead, with outer step 3 drawn
    # ahead and unused; the one after outer step 3 finds it dead while it draws steps 4 and 5
    assert "drawing again the 1 outer step it had drawn ahead" in lines[0]
    assert "drawing again the 2 outer steps it had drawn ahead" in lines[1]

    # the checkpoints written around the deaths resume to the same end (in-process: the serial
    # backend's weights are Ray's, bit for bit)
    resumed = ReptileMetaRL.load(tmp_path / "ckpt" / "meta_ckpt_outer_3", backend="serial")
    with resumed:
        resumed.learn(reset_num_timesteps=False)
        assert_same_weights(weights_of(resumed), reference[0])


# ---------------------------------------------------------------------- sources that are not


def test_task_source_that_cannot_be_rebuilt_ends_the_run_saying_how_to_resume(
    ray_session, tmp_path
):
    ckpts = tmp_path / "ckpt"
    kwargs = cartpole_kwargs(
        **{
            **RUN,
            "outer_steps": 3,
            "tasks_generator_cls": NoStateGenerator,
            "tasks_generator_params": {},
        }
    )
    with ReptileMetaRL(**kwargs) as meta:
        with pytest.raises(RunInterruptedError) as info:
            meta.learn(callback=KillTaskSource(before=(1,)), save_freq=1, save_path=str(ckpts))
        assert meta.num_outer_steps == 1
    err = info.value
    last = str(ckpts / "meta_ckpt_outer_1")
    assert (err.component, err.outer_step, err.last_checkpoint) == ("task source", 2, last)
    message = str(err)
    assert "interrupted in outer step 2: the task source died" in message
    assert "NoStateGenerator has no state_dict() and load_state_dict()" in message
    assert f"distributed-reptile train <config> --resume {last}" in message
    assert f"`ReptileMetaRL.load({last!r})` then `learn(reset_num_timesteps=False)`" in message
    assert isinstance(err.__cause__, ray_session.exceptions.ActorDiedError)
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["meta_ckpt_outer_1"]


def test_task_source_lost_again_and_again_is_given_up_clearly(ray_session, monkeypatch):
    monkeypatch.setattr(remote, "MAX_REBUILDS_IN_A_ROW", 1)  # two actors die, not four
    params = {"task_callable": make_cartpole_task, "fatal_meta_step": 3, "generator_seed": 0}
    source = make_remote_task_source(DiesAtMetaStep, params)
    try:
        assert source.sample_specs([0, 1, 2], [None] * 3)
        with pytest.raises(TaskSourceLostError) as info:
            source.sample_specs([3], [None])
        assert source.rebuilds == remote.MAX_REBUILDS_IN_A_ROW
        message = str(info.value)
        assert "was lost while drawing the tasks of meta step 3, after draw 3" in message
        assert f"{remote.MAX_REBUILDS_IN_A_ROW + 1} times in a row: given up" in message
        assert isinstance(info.value.__cause__, ray_session.exceptions.RayActorError)
        with pytest.raises(TaskSourceLostError, match="given up"):
            source.history()  # and it stays given up
    finally:
        source.close()


# ---------------------------------------------------------------------- the error itself


def test_run_interrupted_error_without_a_checkpoint_says_to_set_save_freq():
    err = RunInterruptedError("learner worker 1", 4, None, detail="It was killed.")
    assert (err.component, err.outer_step, err.last_checkpoint) == ("learner worker 1", 4, None)
    message = str(err)
    assert message.startswith(
        "The run was interrupted in outer step 4: the learner worker 1 died and could not be "
        "replaced. It was killed. No checkpoint was written"
    )
    assert "set save_freq" in message and "--resume" in message


class _Trainer:
    num_outer_steps, outer_steps = 2, 5


def _learn(exc: BaseException | None) -> None:
    """A stand-in for learn(): ``exc`` escapes the loop, and the finally clause checks it."""
    try:
        if exc is not None:
            raise exc
    finally:
        raise_if_interrupted(_Trainer(), None)


def test_only_lost_processes_become_run_interrupted_errors():
    from ray.exceptions import ActorDiedError, RaySystemError

    job: Any = type("Job", (), {"spec": TaskSpec(meta_step=7, random_seed=1), "index": 0})()
    died = TaskFailedError(job, ActorDiedError(), worker="Ray worker 1", attempts=3)
    crashed = TaskFailedError(job, RuntimeError("simulator crashed"), worker="Ray worker 1")
    assert lost_process(died) == ("learner worker 1", died.cause)
    assert lost_process(crashed) is None
    system = RaySystemError("gone")
    assert lost_process(system) == ("Ray cluster", system)
    assert lost_process(ValueError("bad input")) is None

    with pytest.raises(RunInterruptedError, match="outer step 3: the learner worker 1") as info:
        _learn(died)
    assert info.value.__cause__ is died.cause
    with pytest.raises(TaskFailedError):
        _learn(crashed)
    # an error that the caller of learn() is handling is not learn()'s own
    try:
        raise died
    except TaskFailedError:
        _learn(None)
        assert sys.exc_info()[1] is died
