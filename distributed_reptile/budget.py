"""Exact SB3 gradient-update counts for one inner loop (the start-up budget summary)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import TrainFrequencyUnit


def compute_updates(model: Any, inner_steps: int) -> tuple[int, int, int]:
    """``(updates_per_rollout, total_updates, n_rollouts)`` of ``model.learn(inner_steps)``.

    On-policy: rollouts of ``n_steps * n_envs`` steps, each followed by ``n_epochs`` passes over
    ``ceil(rollout / batch_size)`` minibatches (PPO), one step (A2C), or TRPO's one policy step plus
    ``n_critic_updates`` critic passes. Off-policy: one rollout per ``train_freq`` steps; training
    starts once more than ``learning_starts`` steps were collected. Raises ``ValueError`` where no
    exact count exists (episode-based ``train_freq``, unknown algorithms).
    """
    if inner_steps <= 0:
        raise ValueError(f"inner_steps must be positive, got {inner_steps}.")
    n_envs = int(getattr(model, "n_envs", 1))
    algo: Any = model  # algorithm-specific attributes (batch_size, n_critic_updates, train_freq)
    if isinstance(model, OnPolicyAlgorithm):
        rollout = int(model.n_steps) * n_envs
        n_rollouts = math.ceil(inner_steps / rollout)
        name = type(model).__name__
        if name == "TRPO":
            per_rollout = 1 + int(algo.n_critic_updates) * math.ceil(rollout / int(algo.batch_size))
        elif hasattr(model, "n_epochs") and hasattr(model, "batch_size"):
            per_rollout = int(model.n_epochs) * math.ceil(rollout / int(model.batch_size))
        elif name == "A2C":
            per_rollout = 1
        else:
            raise ValueError(f"No exact update count is known for on-policy algorithm {name}.")
        return per_rollout, per_rollout * n_rollouts, n_rollouts
    if isinstance(model, OffPolicyAlgorithm):
        train_freq = algo.train_freq
        if train_freq.unit != TrainFrequencyUnit.STEP:
            raise ValueError(
                "train_freq counted in episodes has no exact update count before training."
            )
        steps_per_rollout = int(train_freq.frequency) * n_envs
        n_rollouts = math.ceil(inner_steps / steps_per_rollout)
        gradient_steps = int(model.gradient_steps)
        per_rollout = gradient_steps if gradient_steps >= 0 else steps_per_rollout
        training_rollouts = sum(
            1
            for k in range(1, n_rollouts + 1)
            if k * steps_per_rollout > int(model.learning_starts)
        )
        return per_rollout, per_rollout * training_rollouts, n_rollouts
    raise ValueError(
        f"{type(model).__name__} is neither an SB3 on-policy nor off-policy algorithm."
    )


@dataclass(frozen=True)
class UpdateBudget:
    """The gradient updates of one inner loop, when SB3's settings give an exact count.

    :param updates_per_rollout: updates after each rollout (``None``: no exact count).
    :param total_updates: updates of the whole inner loop.
    :param n_rollouts: rollouts of the inner loop.
    :param note: why there is no exact count.
    """

    updates_per_rollout: int | None
    total_updates: int | None
    n_rollouts: int | None
    note: str = ""

    @classmethod
    def of(cls, model: Any, inner_steps: int) -> UpdateBudget:
        try:
            return cls(*compute_updates(model, inner_steps))
        except ValueError as exc:
            return cls(None, None, None, str(exc))


def startup_summary(trainer: Any) -> str:
    """The start-up summary of a trainer: its backend, and env steps and exact SB3 gradient
    updates per task, per outer step and in total."""
    b, o = trainer.task_batch_size, trainer.outer_steps
    budget: UpdateBudget = trainer.update_budget
    lines = [
        f"distributed_reptile: {type(trainer).__name__} with {trainer.rl_algorithm.__name__}, "
        f"backend={trainer.backend}, num_workers={trainer.execution.num_workers}, seed={trainer.seed}",
        f"  env steps per task: {trainer.inner_steps:_}; per outer step: {trainer.inner_steps * b:_} "
        f"({b} tasks); in total: {trainer.inner_steps * b * o:_} ({o} outer steps)",
    ]
    if budget.total_updates is not None:
        lines.append(
            f"  gradient updates per task: {budget.total_updates:_} ({budget.updates_per_rollout:_} "
            f"per rollout x {budget.n_rollouts:_} rollouts); per outer step: "
            f"{budget.total_updates * b:_}; in total: {budget.total_updates * b * o:_}"
        )
    else:
        lines.append(f"  gradient updates per task: no exact count ({budget.note})")
    params = trainer.tasks_generator_params
    from distributed_reptile.tasks.generator import TaskGenerator

    if (
        issubclass(trainer.tasks_generator_cls, TaskGenerator)
        and params.get("task_callable") is not None
    ):
        lines.append(
            f"  revisits: ratio {params.get('revisit_ratio', 0.15)}, from meta step "
            f"{params.get('revisit_start', 1)}, sampling {params.get('sampling_method', 'random')}"
            f"{'' if params.get('history', True) else ' (history off: no revisits)'}"
        )
    lines.append(f"  meta-updates: {o} (lr {trainer.get_meta_lr(0):g} at step 0)")
    return "\n".join(lines)
