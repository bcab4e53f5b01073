"""The multi-task baseline: the same policy trained with plain SB3 on a stream of training tasks.

Meta-learning claims to beat simply training one policy on all tasks. This baseline trains the
meta policy's architecture with the plain SB3 algorithm on :class:`TaskSwitchingEnv`, which draws a
new task from the family's ``"train"`` split at every episode (every ``reset``), for as many env
steps as a meta-training run used. Its weights are then evaluated exactly like the meta-init.

Command line (one command per baseline)::

    python -m distributed_reptile.baselines CHECKPOINT --output multitask.zip [--seed 0]
    python -m distributed_reptile.baselines --family pointnav --timesteps 200000 --output mt.zip \
        --algo-kwargs '{"n_steps": 1000, "policy_kwargs": {"net_arch": [64, 64]}}'
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.logger import configure

from distributed_reptile.sb3_models import build_sb3_model
from distributed_reptile.step_history import totals_of_state
from distributed_reptile.tasks.spec import TaskCallable, check_task_pair

_MAX_SEED = 2**31 - 1


class TaskSwitchingEnv(gym.Env):
    """An env that is a new task of a family at every episode.

    Each ``reset`` closes the current task, draws a task seed from its own RNG, builds that task of
    ``split`` and resets it; ``step`` is the task's own. Every task of a family shares the spaces
    of the first one (checked at each switch).

    :param task_callable: builds ``(env, info)`` from ``random_seed=`` (and ``split=`` if it takes it).
    :param task_params: extra keyword arguments of ``task_callable``.
    :param seed: seed of the task stream.
    :param split: the family split to draw from (``"train"``).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        task_callable: TaskCallable,
        task_params: Mapping[str, Any] | None = None,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        super().__init__()
        from distributed_reptile.tasks.generator import accepts_named_arg

        self.task_callable = task_callable
        self.task_params = dict(task_params or {})
        self.task_params.pop("split", None)
        if accepts_named_arg(task_callable, "split"):
            self.task_params["split"] = split
        self._task_rng = np.random.default_rng(seed)
        self.tasks_drawn = 0
        self.task_info: dict[str, Any] = {}
        self._env: gym.Env = self._next_task()
        self._fresh = True  # the first task is used by the first episode
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space

    def _next_task(self) -> gym.Env:
        task_seed = int(self._task_rng.integers(0, _MAX_SEED))
        env, info = check_task_pair(
            self.task_callable(random_seed=task_seed, **self.task_params), where="task callable"
        )
        self.task_info = {"random_seed": task_seed, **info}
        self.tasks_drawn += 1
        return env

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        if not self._fresh:
            self._env.close()
            self._env = self._next_task()
            if (
                self._env.observation_space != self.observation_space
                or self._env.action_space != self.action_space
            ):
                raise ValueError(
                    f"Task {self.task_info} has spaces that differ from the first task's: every task of "
                    "a family must share observation and action spaces."
                )
        self._fresh = False
        episode_seed = int(self.np_random.integers(0, _MAX_SEED))
        obs, info = self._env.reset(seed=episode_seed, options=options)
        return obs, {**info, "task": self.task_info}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._env.step(action)
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        self._env.close()


def train_multitask(
    family: str | TaskCallable,
    rl_algorithm: type,
    rl_algo_kwargs: Mapping[str, Any],
    total_timesteps: int,
    seed: int = 0,
    task_params: Mapping[str, Any] | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> Any:
    """Train the multi-task baseline: plain SB3 on a new training task every episode.

    :param family: a built-in family name or a task callable.
    :param rl_algorithm: the SB3 algorithm class (the meta-training run's).
    :param rl_algo_kwargs: its keyword arguments, ``policy`` included; use the meta-training run's
        architecture (``policy_kwargs``) so the weights can be compared.
    :param total_timesteps: env steps (a meta-training run's total, for a fair comparison).
    :param seed: seed of the initial weights, the task stream and the learner.
    :param task_params: extra keyword arguments of the task callable.
    :param tensorboard_log: SB3 TensorBoard folder (``None``: no log).
    :param verbose: SB3 verbosity.
    :return: the trained model.
    """
    from distributed_reptile.evaluation.core import resolve_task_callable

    _, make = resolve_task_callable(family)
    if int(total_timesteps) < 1:
        raise ValueError(f"total_timesteps must be positive, got {total_timesteps}.")
    env = TaskSwitchingEnv(make, task_params, seed=seed, split="train")
    kwargs = {**rl_algo_kwargs, "seed": int(seed), "verbose": verbose}
    model = build_sb3_model(
        rl_algorithm,
        kwargs,
        env,
        seed=seed,
        device=rl_algo_kwargs.get("device", "cpu"),
        quiet_logger=tensorboard_log is None and verbose == 0,
    )
    if tensorboard_log is not None:
        model.set_logger(configure(tensorboard_log, ["tensorboard"]))
    model.learn(int(total_timesteps))
    return model


def checkpoint_training_setup(checkpoint: str | Path) -> dict[str, Any]:
    """What a multi-task baseline needs from a meta-training checkpoint: the task callable and its
    parameters, the learner class and keyword arguments, and the env steps the run used."""
    folder = Path(checkpoint)
    state_path, config_path = folder / "trainer_state.json", folder / "config.pkl"
    if not state_path.exists():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no trainer_state.json).")
    if not config_path.exists():
        raise ValueError(
            f"{folder} holds no config.pkl (the trainer arguments could not be pickled): pass "
            "--family, --timesteps and --algo-kwargs explicitly."
        )
    state = json.loads(state_path.read_text(encoding="utf-8"))
    config = pickle.loads(config_path.read_bytes())
    params = dict(config.get("tasks_generator_params") or {})
    if params.get("task_callable") is None:
        raise ValueError(
            f"{folder} was trained with a task generator that has no task_callable: pass --family."
        )
    env_steps = totals_of_state(state).env_steps
    return {
        "task_callable": params["task_callable"],
        "task_params": dict(params.get("task_callable_params") or {}),
        "rl_algorithm": config["rl_algorithm"],
        "rl_algo_kwargs": dict(config.get("rl_algo_kwargs") or {}),
        "env_steps": env_steps,
        "seed": int(state["seed"]),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distributed_reptile.baselines",
        description="Train the multi-task baseline (plain SB3, a new training task every episode).",
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="meta-training checkpoint: family, learner, architecture and env steps are read from it",
    )
    parser.add_argument(
        "--family", default=None, help="built-in family name (needed without a checkpoint)"
    )
    parser.add_argument(
        "--algo", default="PPO", help="SB3 algorithm name without a checkpoint (PPO, A2C, SAC...)"
    )
    parser.add_argument(
        "--algo-kwargs",
        default=None,
        help="JSON keyword arguments of the algorithm; they replace the checkpoint's",
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        default=None,
        help="env steps (default: those of the checkpoint's meta-training run)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", "--out", dest="out", required=True, help="path of the saved SB3 model (.zip)"
    )
    parser.add_argument("--tensorboard-log", default=None)
    parser.add_argument("--verbose", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Train one multi-task baseline and save it with SB3's ``.save()``."""
    args = build_parser().parse_args(argv)
    task_params: dict[str, Any] = {}
    if args.checkpoint is not None:
        setup = checkpoint_training_setup(args.checkpoint)
        family: Any = args.family or setup["task_callable"]
        task_params = setup["task_params"]
        algo = setup["rl_algorithm"]
        algo_kwargs = setup["rl_algo_kwargs"]
        timesteps = args.timesteps or setup["env_steps"]
    else:
        if args.family is None or args.timesteps is None:
            raise SystemExit("Without a checkpoint, give --family and --timesteps.")
        import stable_baselines3

        algo = getattr(stable_baselines3, args.algo, None)
        if algo is None:
            raise SystemExit(
                f"Unknown SB3 algorithm {args.algo!r}: use PPO, A2C, SAC, TD3, DQN or DDPG."
            )
        family, algo_kwargs, timesteps = args.family, {"policy": "MlpPolicy"}, args.timesteps
    if args.algo_kwargs:
        algo_kwargs = {**algo_kwargs, **json.loads(args.algo_kwargs)}
    t0 = time.perf_counter()
    model = train_multitask(
        family,
        algo,
        algo_kwargs,
        int(timesteps),
        seed=args.seed,
        task_params=task_params,
        tensorboard_log=args.tensorboard_log,
        verbose=args.verbose,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    print(
        json.dumps(
            {
                "out": str(out),
                "env_steps": int(model.num_timesteps),
                "tasks_drawn": model.get_env().get_attr("tasks_drawn")[0],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["TaskSwitchingEnv", "checkpoint_training_setup", "train_multitask"]
