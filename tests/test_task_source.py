"""TaskSource: drawing the next outer step's tasks ahead, and undoing an unused draw exactly."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from distributed_reptile import TaskGenerator
from distributed_reptile.tasks.families import make_cartpole_task
from distributed_reptile.tasks.remote import make_remote_task_source
from distributed_reptile.tasks.source import TaskSource


class StateOnlyGenerator:
    """A user generator with the original protocol and state_dict(), but no mark()."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def get_task(self, meta_step: int, seed: int | None = None) -> tuple[Any, dict, None]:
        return gym.make("CartPole-v1"), {"draw": float(self.rng.random())}, None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class StatelessGenerator:
    def get_task(self, meta_step: int, seed: int | None = None) -> tuple[Any, dict, None]:
        return gym.make("CartPole-v1"), {}, None


def _described(specs: list[Any]) -> list[dict[str, Any]]:
    return [s.describe() for s in specs]


@pytest.mark.parametrize("generator", [StateOnlyGenerator, StatelessGenerator])
def test_a_generator_without_the_mark_protocol_is_never_drawn_ahead(generator):
    """Undoing draws through load_state_dict would make even an uninterrupted run depend on the
    user's state_dict being complete: such generators are simply not drawn ahead."""
    source = TaskSource(generator, {})
    assert not source.can_prefetch
    with pytest.raises(RuntimeError, match="cannot undo draws"):
        source.sample_steps([([0], [None])])
    with pytest.raises(RuntimeError, match="nothing to undo"):
        source.rollback()


def _steps(first: int, n: int, b: int = 2) -> list[tuple[list[int], list[int | None]]]:
    return [([o * b + i for i in range(b)], [None] * b) for o in range(first, first + n)]


@pytest.mark.parametrize("sampling_method", ["random", "cyclic"])
def test_steps_drawn_ahead_are_undone_from_any_step(sampling_method):
    """Draw 5 steps ahead, use some, undo the rest: the source continues as if it had drawn
    only the steps used (with revisits, whose history entries are undone too)."""
    cls: Any = TaskGenerator
    params: dict[str, Any] = {
        "task_callable": make_cartpole_task,
        "revisit_ratio": 0.6,
        "sampling_method": sampling_method,
        "generator_seed": 4,
    }
    for used in range(5):
        straight = TaskSource(cls, params)
        expected = [_described(straight.sample_specs(m, s)) for m, s in _steps(0, 9)]
        source = TaskSource(cls, params)
        got = [_described(source.sample_specs(m, s)) for m, s in _steps(0, 2)]
        ahead = source.sample_steps(_steps(2, 5))
        got += [_described(specs) for specs in ahead[:used]]
        # the state a checkpoint takes here: as if only the steps used had been drawn
        reference = TaskSource(cls, params)
        for m, s in _steps(0, 2 + used):
            reference.sample_specs(m, s)
        assert source.state_dict(used) == reference.state_dict()
        source.rollback(used)
        got += [_described(source.sample_specs(m, s)) for m, s in _steps(2 + used, 7 - used)]
        assert got == expected, used
        assert source.state_dict() == straight.state_dict()


class FailsAtStep:
    """A generator that raises for meta step 6 (outer step 3, with 2 tasks per step)."""

    def __init__(self) -> None:
        self.gen = TaskGenerator(task_callable=make_cartpole_task, generator_seed=0)

    def get_task(self, meta_step: int, seed: int | None = None) -> tuple[Any, dict, Any]:
        if meta_step == 6:
            raise RuntimeError("no task for meta step 6")
        return self.gen.get_task(meta_step, seed)

    def __getattr__(self, name: str) -> Any:  # state and the mark protocol: the inner one's
        protocol = ("state_dict", "load_state_dict", "mark", "rollback", "release_marks")
        if name in (*protocol, "state_dict_at"):
            return getattr(self.gen, name)
        raise AttributeError(name)


def test_remote_source_draws_ahead_and_undoes_unused_draws(ray_session):
    params = {"task_callable": make_cartpole_task, "revisit_ratio": 0.5, "generator_seed": 1}
    remote = make_remote_task_source(TaskGenerator, params)
    local = TaskSource(TaskGenerator, params)
    assert remote.can_prefetch
    try:
        for step in range(6):
            (steps, seeds) = _steps(step, 1)[0]
            got = remote.sample_specs(steps, seeds)
            assert _described(got) == _described(local.sample_specs(steps, seeds))
            remote.prefetch(_steps(step + 1, 4))
        # steps drawn ahead are pending: the state (a checkpoint) is the state before them, and
        # they stay drawn
        assert remote.state_dict() == local.state_dict()
        assert remote._ahead_ref is not None
        (steps, seeds) = _steps(6, 1)[0]
        assert _described(remote.sample_specs(steps, seeds)) == _described(
            local.sample_specs(steps, seeds)
        )
        remote.prefetch(_steps(7, 4))
        # reading the history undoes them first
        assert local.history() and remote.history() == local.history()
        # a request other than the next step drawn ahead: the rest is undone, then it is drawn
        remote.prefetch(_steps(7, 4))
        assert _described(remote.sample_specs([14], [7])) == _described(
            local.sample_specs([14], [7])
        )
        assert remote.state_dict() == local.state_dict()
    finally:
        remote.close()


def test_a_draw_ahead_that_fails_fails_at_its_own_step(ray_session):
    remote = make_remote_task_source(FailsAtStep, {})
    assert remote.can_prefetch
    try:
        remote.prefetch(_steps(0, 5))
        for m, s in _steps(0, 3):
            remote.sample_specs(m, s)  # steps 0-2 (meta steps 0-5) come from the draw ahead
        with pytest.raises(Exception, match="no task for meta step 6"):
            remote.sample_specs(*_steps(3, 1)[0])
    finally:
        remote.close()
