"""Exact SB3 gradient-update counts for one inner loop (the start-up budget summary)."""

from __future__ import annotations

import math
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
