"""TaskSource: drawing the next outer step's tasks ahead, and undoing an unused draw exactly."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from distributed_reptile import TaskGenerator
from distributed_reptile.runners.ray_pool import make_remote_task_source
from distributed_reptile.tasks.families import make_cartpole_task
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


def test_rollback_through_state_dict_when_the_generator_has_no_mark():
    source = TaskSource(StateOnlyGenerator, {"seed": 1})
    assert source.can_prefetch
    source.sample_specs([0, 1], [None, None])
    ahead = _described(source.sample_specs([2, 3], [None, None], mark=True))
    source.rollback()
    assert source.num_sampled == 2
    assert _described(source.sample_specs([2, 3], [None, None])) == ahead


def test_a_generator_that_cannot_undo_draws_is_never_drawn_ahead():
    source = TaskSource(StatelessGenerator, {})
    assert not source.can_prefetch
    with pytest.raises(RuntimeError, match="cannot undo draws"):
        source.sample_specs([0], [None], mark=True)
    with pytest.raises(RuntimeError, match="nothing to undo"):
        source.rollback()


def test_remote_source_draws_ahead_and_undoes_unused_draws(ray_session):
    params = {"task_callable": make_cartpole_task, "revisit_ratio": 0.5, "generator_seed": 1}
    remote = make_remote_task_source(TaskGenerator, params)
    local = TaskSource(TaskGenerator, params)
    assert remote.can_prefetch
    try:
        for step in range(6):
            steps = [2 * step, 2 * step + 1]
            got = remote.sample_specs(steps, [None, None])
            assert _described(got) == _described(local.sample_specs(steps, [None, None]))
            remote.prefetch([2 * step + 2, 2 * step + 3], [None, None])
        # a draw ahead is pending: reading the state undoes it first
        assert remote.state_dict() == local.state_dict()
        assert local.history() and remote.history() == local.history()
        # a request other than the one drawn ahead: the draw is undone, then this one is made
        remote.prefetch([12, 13], [None, None])
        assert _described(remote.sample_specs([12], [7])) == _described(
            local.sample_specs([12], [7])
        )
        assert remote.state_dict() == local.state_dict()
    finally:
        remote.close()
