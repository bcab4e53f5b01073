"""The benchmark workload: PPO on the CartPole family, and policies of a chosen size."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed_reptile.bench.common import BenchInputError
from distributed_reptile.tasks.families import make_cartpole_task

#: CartPole's observation and action sizes (the policy's input and output widths).
CARTPOLE_OBS_DIM = 4
CARTPOLE_ACTIONS = 2


@dataclass
class Workload:
    """One inner loop's settings: PPO ``MlpPolicy`` on ``make_cartpole_task``.

    :param n_steps: PPO rollout length.
    :param batch_size: PPO minibatch size.
    :param n_epochs: PPO epochs per rollout.
    :param inner_steps: env steps of one inner loop.
    :param task_batch_size: tasks per outer step.
    :param net_arch: PPO ``net_arch`` (``None``: SB3's default, 64x64 for actor and critic).
    :param meta_lr: Reptile step size.
    :param seed: run seed.
    """

    n_steps: int = 512
    batch_size: int = 64
    n_epochs: int = 10
    inner_steps: int = 2048
    task_batch_size: int = 8
    net_arch: Any = None
    meta_lr: float = 0.5
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def rl_algo_kwargs(self) -> dict[str, Any]:
        """PPO's keyword arguments (CPU, no logging)."""
        kwargs: dict[str, Any] = {
            "policy": "MlpPolicy",
            "n_steps": self.n_steps,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "device": "cpu",
        }
        if self.net_arch is not None:
            kwargs["policy_kwargs"] = {"net_arch": self.net_arch}
        return kwargs

    def trainer_kwargs(
        self, backend: str, num_workers: int = 1, **overrides: Any
    ) -> dict[str, Any]:
        """Keyword arguments of :class:`~distributed_reptile.ReptileMetaRL` for this workload."""
        from stable_baselines3 import PPO

        from distributed_reptile import TaskGenerator

        kwargs: dict[str, Any] = {
            "tasks_generator_cls": TaskGenerator,
            "tasks_generator_params": {"task_callable": make_cartpole_task},
            "rl_algorithm": PPO,
            "rl_algo_kwargs": self.rl_algo_kwargs(),
            "inner_steps": self.inner_steps,
            "outer_steps": 1,
            "task_batch_size": self.task_batch_size,
            "meta_lr": self.meta_lr,
            "backend": backend,
            "num_workers": num_workers,
            "seed": self.seed,
            "device": "cpu",
        }
        kwargs.update(overrides)
        return kwargs

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dict."""
        out = asdict(self)
        out["algorithm"] = "stable_baselines3.PPO"
        out["task_callable"] = "distributed_reptile.tasks.families:make_cartpole_task"
        return out


def add_workload_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The workload's command-line options (``--inner-steps``, ``--n-steps``...)."""
    base = Workload(**{k: v for k, v in defaults.items() if k in Workload.__dataclass_fields__})
    parser.add_argument(
        "--inner-steps", type=int, default=base.inner_steps, help="env steps per inner loop"
    )
    parser.add_argument("--n-steps", type=int, default=base.n_steps, help="PPO rollout length")
    parser.add_argument(
        "--batch-size", type=int, default=base.batch_size, help="PPO minibatch size"
    )
    parser.add_argument(
        "--n-epochs", type=int, default=base.n_epochs, help="PPO epochs per rollout"
    )
    parser.add_argument(
        "--tasks", type=int, default=base.task_batch_size, help="tasks per outer step"
    )
    parser.add_argument("--seed", type=int, default=base.seed, help="run seed")


def workload_from_args(args: argparse.Namespace, **overrides: Any) -> Workload:
    """A :class:`Workload` from the options of :func:`add_workload_arguments`."""
    values = {
        "inner_steps": args.inner_steps,
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "task_batch_size": args.tasks,
        "seed": args.seed,
    }
    values.update(overrides)
    for name in ("inner_steps", "n_steps", "batch_size", "n_epochs", "task_batch_size"):
        if values[name] <= 0:
            raise BenchInputError(
                f"--{name.replace('_', '-')} must be a positive integer, got {values[name]}."
            )
    return Workload(**values)


def ppo_parameter_count(
    width: int, obs_dim: int = CARTPOLE_OBS_DIM, actions: int = CARTPOLE_ACTIONS
) -> int:
    """Parameters of a PPO ``MlpPolicy`` with ``net_arch=dict(pi=[w, w], vf=[w, w])`` (discrete actions)."""
    tower = (obs_dim * width + width) + (width * width + width)
    return 2 * tower + (width * actions + actions) + (width + 1)


def width_for_parameters(target: int) -> int:
    """The hidden width whose two-layer actor and critic have about ``target`` parameters."""
    if target <= 0:
        raise ValueError(f"a policy size must be a positive number of parameters, got {target}.")
    # ppo_parameter_count(w) = 2 w^2 + (2 obs + actions + 5) w + actions + 1
    b = 2.0 * CARTPOLE_OBS_DIM + CARTPOLE_ACTIONS + 5
    guess = max(1, round((-b + math.sqrt(b * b + 8.0 * target)) / 4.0))
    return min(
        range(max(1, guess - 1), guess + 2), key=lambda w: abs(ppo_parameter_count(w) - target)
    )
