"""BaseMetaAlgorithm: the outer loop, the SB3-like surface, and the runner it drives."""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import pickle
import platform
import re
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.utils import get_device, set_random_seed

from distributed_reptile import checkpoint as ckpt
from distributed_reptile.budget import compute_updates
from distributed_reptile.callbacks import CheckpointCallback, MaybeCallback, to_callback
from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob
from distributed_reptile.runners.base import (
    Runner,
    TaskSourceHandle,
    check_task_retries,
    check_tasks_per_call,
)
from distributed_reptile.schedules import LRSchedule, normalize_lr_schedule
from distributed_reptile.seeding import (
    derive_seed,
    fresh_run_seed,
    generator_seed_from_run_seed,
    task_seed,
)
from distributed_reptile.tasks.generator import TaskGenerator
from distributed_reptile.weights import module_to_numpy, non_finite_names

SelfMeta = TypeVar("SelfMeta", bound="BaseMetaAlgorithm")

BACKENDS = ("ray", "serial")
TASK_SEED_MODES = ("generator", "meta_step")
_INIT_STREAM = 0x1417
#: Outer steps whose tasks a Ray task source draws ahead, in one call (undone when unused).
DRAW_AHEAD_STEPS = 8


SB3_METHODS = ("learn", "predict", "set_env", "get_env", "set_random_seed", "save")


def is_sb3_like(algo: Any) -> bool:
    """An SB3 algorithm class, or a class offering the SB3 methods the trainer calls."""
    if not inspect.isclass(algo):
        return False
    return issubclass(algo, BaseAlgorithm) or all(
        callable(getattr(algo, m, None)) for m in SB3_METHODS
    )


class NonFiniteWeightsError(RuntimeError):
    """An adapted weight is NaN or infinite; it was not folded into the meta weights."""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


class BaseMetaAlgorithm(ABC):
    """Generic first-order meta-RL trainer over SB3 inner learners.

    Each outer step samples ``task_batch_size`` tasks from the task generator, adapts the meta
    policy to each with SB3's ``learn`` (in-process or on Ray actors), and hands the adapted weights,
    in task order, to :meth:`meta_update`. Mirrors SB3's API: ``learn``, ``predict``, ``get_env``,
    ``set_random_seed``, ``save``/``load``.

    :param tasks_generator_cls: task generator class (:class:`TaskGenerator` or your own with
        ``get_task(meta_step, seed=None) -> (env, info, origin_meta_step)`` and ``reset_history()``).
    :param tasks_generator_params: its keyword arguments. For ``TaskGenerator`` without a
        ``generator_seed``, one is derived from ``seed``.
    :param rl_algorithm: SB3 algorithm class (``PPO``, ``A2C``, ``SAC``, ``TD3``, ``DQN``, ``sb3_contrib.TRPO``...).
    :param rl_algo_kwargs: its keyword arguments, ``policy`` included (default ``"MlpPolicy"``).
    :param inner_steps: env steps of each task's inner loop.
    :param outer_steps: number of meta-updates (outer steps) of a ``learn`` call.
    :param meta_lr: meta step size: a float or ``(step, total_steps) -> lr``
        (``total_steps = max(outer_steps - 1, 1)``); see :func:`linear_schedule`.
    :param use_meta_optimizer: apply the meta step through an optimizer (gradient ``-(mean delta)``).
    :param meta_optimizer_cls: that optimizer's class (default Adam).
    :param meta_optimizer_kwargs: its keyword arguments (``lr`` comes from ``meta_lr``).
    :param task_batch_size: tasks per outer step.
    :param inner_loop_params: extra keyword arguments of the inner ``learn`` call.
    :param ignored_layers: parameter-name prefixes left out of the meta-update.
    :param ignore_optimizer_params: keep ignored parameters out of the meta-optimizer too.
    :param verbose: 0 silent, 1 start-up summary and per-step lines.
    :param device: device of the meta model (task models use ``rl_algo_kwargs['device']`` or "auto").
    :param tensorboard_logs: folder of outer-loop TensorBoard logs (``None``: none are written).
    :param num_workers: Ray actors running inner loops (``backend="ray"``).
    :param backend: ``"ray"`` (actors; Ray is started on 127.0.0.1 when no cluster is given) or
        ``"serial"`` (same inner-loop code, in this process).
    :param seed: run seed. Per-task seeds derive from (seed, meta step), never from the worker, so
        the meta weights do not depend on the backend or the number of workers. ``None`` draws one.
    :param ray_address: Ray cluster to join (else ``RAY_ADDRESS``, as set by ``ray job submit``).
    :param worker_resources: Ray resources of each worker actor, e.g. ``{"num_cpus": 1, "num_gpus": 0.25}``.
    :param reuse_models: reuse one SB3 model per worker across tasks (exactly equivalent, faster).
    :param on_nonfinite: what to do with an adapted weight that is NaN/inf: ``"raise"`` or ``"skip"`` the task.
    :param max_worker_restarts: restarts of a Ray worker that died.
    :param max_task_retries: Ray's retries of a task whose worker died (a worker Ray gives up on
        is replaced by a new one).
    :param task_retries: reruns of a task whose inner loop raised, before the run fails with an
        error naming the task and the original exception.
    :param task_timeout_s: a task running longer is cancelled (its worker replaced) and rerun
        (``None``: no limit; Ray backend only).
    :param tasks_per_call: tasks sent to a Ray worker in one actor call: ``1`` (default) balances
        the load best; more (or ``"auto"``: the batch split evenly over the workers) saves Ray's
        per-call cost when inner loops take only milliseconds. The meta weights do not depend on it.
    :param connect_timeout_s: time allowed to reach ``ray_address`` before failing (``None``: Ray's own).
    :param ray_init_kwargs: extra keyword arguments of ``ray.init``.
    :param inner_learner_cls: class running each inner loop (subclass :class:`InnerLearner` to
        change how a task is adapted).
    """

    def __init__(
        self,
        tasks_generator_cls: type,
        tasks_generator_params: dict[str, Any],
        rl_algorithm: type[BaseAlgorithm],
        rl_algo_kwargs: dict[str, Any],
        inner_steps: int,
        outer_steps: int,
        meta_lr: LRSchedule,
        use_meta_optimizer: bool = False,
        meta_optimizer_cls: type[th.optim.Optimizer] = th.optim.Adam,
        meta_optimizer_kwargs: dict[str, Any] | None = None,
        task_batch_size: int = 1,
        inner_loop_params: dict[str, Any] | None = None,
        ignored_layers: list[str] | None = None,
        ignore_optimizer_params: bool = False,
        verbose: int = 0,
        device: th.device | str = "auto",
        tensorboard_logs: str | None = None,
        num_workers: int = 1,
        backend: Literal["ray", "serial"] = "ray",
        seed: int | None = None,
        ray_address: str | None = None,
        worker_resources: dict[str, Any] | None = None,
        reuse_models: bool = True,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        max_worker_restarts: int = 3,
        max_task_retries: int = 3,
        task_retries: int = 2,
        task_timeout_s: float | None = None,
        tasks_per_call: int | Literal["auto"] = 1,
        connect_timeout_s: float | None = 30.0,
        ray_init_kwargs: dict[str, Any] | None = None,
        inner_learner_cls: type[InnerLearner] = InnerLearner,
    ) -> None:
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._validate_args()
        self.tasks_generator_cls = tasks_generator_cls
        self.tasks_generator_params = dict(tasks_generator_params or {})
        self.rl_algorithm = rl_algorithm
        self.rl_algo_kwargs = dict(rl_algo_kwargs or {})
        self.inner_steps = int(inner_steps)
        self.outer_steps = int(outer_steps)
        self.task_batch_size = int(task_batch_size)
        self.inner_loop_params = dict(inner_loop_params or {})
        self.ignored_layer_prefixes = list(ignored_layers or [])
        self.ignore_optimizer_params = ignore_optimizer_params
        self.use_meta_optimizer = use_meta_optimizer
        self.meta_optimizer_cls = meta_optimizer_cls
        self.meta_optimizer_kwargs = dict(meta_optimizer_kwargs or {})
        self.meta_lr = meta_lr
        self.meta_lr_schedule = normalize_lr_schedule(meta_lr)
        self.is_constant_meta_lr = isinstance(meta_lr, int | float)
        self.current_meta_lr: float | None = (
            float(meta_lr) if isinstance(meta_lr, int | float) else None
        )
        self._last_optimizer_meta_lr: float | None = self.current_meta_lr
        self.verbose = int(verbose)
        self.device = get_device(device)
        self.tensorboard_logs = tensorboard_logs
        self.num_workers = int(num_workers)
        self.backend = backend
        self.seed = int(seed) if seed is not None else fresh_run_seed()
        self.ray_address = ray_address
        self.worker_resources = dict(worker_resources or {})
        self.reuse_models = reuse_models
        self.on_nonfinite = on_nonfinite
        self.max_worker_restarts = int(max_worker_restarts)
        self.max_task_retries = int(max_task_retries)
        self.task_retries = int(task_retries)
        self.task_timeout_s = task_timeout_s
        self.tasks_per_call = tasks_per_call
        self.connect_timeout_s = connect_timeout_s
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.inner_learner_cls = inner_learner_cls

        self.num_outer_steps = 0  # outer steps completed (the schedule position)
        self.step_records: list[dict[str, Any]] = []
        self.meta_logger: Logger | None = None
        self._ray_mode = "none"
        self._runner: Runner | None = None
        self._closed = False
        self._last_update_norm = float("nan")
        self._bar: Any = None
        self._task_seed_mode = "generator"

        try:
            self._start_backend()
            self.task_source = self._make_task_source()
            first_env = self._bootstrap_env()
            self.meta_algo = self.instantiate_model(first_env)
            self.meta_policy = self.meta_algo.policy
            self.ignored_params = self._get_ignored_params(self.ignored_layer_prefixes)
            self.meta_optimizer = self._build_meta_optimizer()
            self._init_budget_counters()
            self._log_startup_summary()
            _ = self.runner  # start the workers now: errors surface here, not mid-run
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ validation
    def _validate_args(self) -> None:
        a = self._init_kwargs
        for name in ("inner_steps", "outer_steps", "task_batch_size", "num_workers"):
            _positive_int(name, a[name])
        if a["backend"] not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {a['backend']!r}.")
        if a["on_nonfinite"] not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {a['on_nonfinite']!r}.")
        algo = a["rl_algorithm"]
        if not is_sb3_like(algo):
            raise TypeError(
                f"rl_algorithm must be an SB3 algorithm class such as stable_baselines3.PPO, got {algo!r}. "
                "Pass the class itself, not an instance or a name; a custom learner needs SB3's "
                f"methods {', '.join(SB3_METHODS)} and a `policy` torch module."
            )
        if not inspect.isclass(a["tasks_generator_cls"]):
            raise TypeError(
                "tasks_generator_cls must be a class (e.g. distributed_reptile.TaskGenerator); its "
                "arguments go in tasks_generator_params."
            )
        if not isinstance(a["rl_algo_kwargs"], dict):
            raise TypeError(
                "rl_algo_kwargs must be a dict of the SB3 algorithm's keyword arguments."
            )
        if a["tasks_generator_params"] is not None and not isinstance(
            a["tasks_generator_params"], dict
        ):
            raise TypeError(
                "tasks_generator_params must be a dict of the task generator's keyword arguments."
            )
        normalize_lr_schedule(a["meta_lr"])
        check_task_retries(a["task_retries"])
        check_tasks_per_call(a["tasks_per_call"])
        timeout = a["task_timeout_s"]
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(
                f"task_timeout_s must be None or a positive number of seconds, got {timeout!r}."
            )

    # ------------------------------------------------------------------ construction
    def _start_backend(self) -> None:
        if self.backend == "ray":
            from distributed_reptile.ray_utils import ensure_ray

            self._ray_mode = ensure_ray(
                self.ray_address,
                ray_init_kwargs=self.ray_init_kwargs,
                connect_timeout_s=self.connect_timeout_s,
            )

    def _generator_params(self) -> dict[str, Any]:
        params = dict(self.tasks_generator_params)
        if "generator_seed" not in params and issubclass(self.tasks_generator_cls, TaskGenerator):
            params["generator_seed"] = generator_seed_from_run_seed(self.seed)
        return params

    def _make_task_source(self) -> TaskSourceHandle:
        if self.backend == "ray":
            from distributed_reptile.runners.ray_pool import make_remote_task_source

            return make_remote_task_source(self.tasks_generator_cls, self._generator_params())
        from distributed_reptile.tasks.source import TaskSource

        return TaskSource(self.tasks_generator_cls, self._generator_params())

    def _bootstrap_env(self) -> Any:
        """The first task's env (meta step 0), used to build the meta model; the history is then reset."""
        spec = self.task_source.sample_specs([0], [None])[0]
        self.task_source.reset_history()
        return spec.build_env()

    def instantiate_model(
        self, env: Any, rl_algo_kwargs: dict[str, Any] | None = None
    ) -> BaseAlgorithm:
        """An SB3 model on ``env``; the meta model's initial weights come from ``seed``."""
        # SB3 edits policy_kwargs in place: never hand it the user's dict.
        params = copy.deepcopy(
            rl_algo_kwargs if rl_algo_kwargs is not None else self.rl_algo_kwargs
        )
        policy = params.pop("policy", "MlpPolicy")
        device = params.pop("device", self.device)
        set_random_seed(derive_seed(self.seed, _INIT_STREAM))
        model = self.rl_algorithm(env=env, policy=policy, device=device, **params)
        if hasattr(model, "set_logger"):
            model.set_logger(Logger(folder=None, output_formats=[]))
        return model

    def _learner_factory(self) -> functools.partial[InnerLearner]:
        learner_cls = self.inner_learner_cls
        overrides = {
            name: getattr(type(self), name)
            for name in ("inner_adapt", "copy_meta_to_task")
            if hasattr(type(self), name)
        }
        if overrides:
            learner_cls = type(f"{type(self).__name__}InnerLearner", (learner_cls,), overrides)
        params = dict(self.rl_algo_kwargs)
        params.setdefault("device", "auto")
        return functools.partial(
            learner_cls,
            rl_algorithm=self.rl_algorithm,
            rl_algo_kwargs=params,
            inner_steps=self.inner_steps,
            inner_loop_params=self.inner_loop_params,
            reuse_model=self.reuse_models,
            torch_threads=1,
            expected_spaces=(self.meta_algo.observation_space, self.meta_algo.action_space),
        )

    @property
    def runner(self) -> Runner:
        """The backend that runs inner loops (created on first use)."""
        if self._runner is None:
            factory = self._learner_factory()
            if self.backend == "ray":
                from distributed_reptile.runners.ray_pool import RayRunner

                self._runner = RayRunner(
                    factory,
                    num_workers=self.num_workers,
                    worker_resources=self.worker_resources,
                    max_restarts=self.max_worker_restarts,
                    max_task_retries=self.max_task_retries,
                    task_retries=self.task_retries,
                    task_timeout_s=self.task_timeout_s,
                    tasks_per_call=self.tasks_per_call,
                )
            else:
                from distributed_reptile.runners.serial import SerialRunner

                self._runner = SerialRunner(factory, task_retries=self.task_retries)
        return self._runner

    def _get_ignored_params(self, prefixes: list[str]) -> set[str]:
        """Parameter names matched by the ``ignored_layers`` prefixes (each prefix must match)."""
        names = [n for n, _ in self.meta_policy.named_parameters()]
        unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unmatched:
            raise ValueError(
                f"ignored_layers prefixes {unmatched} match no parameter of the meta policy. "
                f"Available parameter names: {names}"
            )
        return {n for n in names if any(n.startswith(p) for p in prefixes)}

    def get_meta_optimizer_params(self) -> list[th.nn.Parameter]:
        """Parameters handed to the meta-optimizer."""
        return [
            p
            for n, p in self.meta_policy.named_parameters()
            if not (self.ignore_optimizer_params and n in self.ignored_params)
        ]

    def _build_meta_optimizer(self) -> th.optim.Optimizer | None:
        if not self.use_meta_optimizer:
            return None
        lr0 = self.get_meta_lr(0)
        self._last_optimizer_meta_lr = lr0
        optimizer_cls: Any = self.meta_optimizer_cls
        return optimizer_cls(self.get_meta_optimizer_params(), lr=lr0, **self.meta_optimizer_kwargs)

    def _init_budget_counters(self) -> None:
        self.updates_per_rollout: int | None = None
        self.total_updates: int | None = None
        self.n_rollouts: int | None = None
        self.budget_note = ""
        try:
            self.updates_per_rollout, self.total_updates, self.n_rollouts = compute_updates(
                self.meta_algo, self.inner_steps
            )
        except ValueError as exc:
            self.budget_note = str(exc)

    def budget_summary(self) -> str:
        """The start-up summary: env steps and exact SB3 gradient updates per task, step and run."""
        b, o = self.task_batch_size, self.outer_steps
        lines = [
            f"distributed_reptile: {type(self).__name__} with {self.rl_algorithm.__name__}, "
            f"backend={self.backend}, num_workers={self.num_workers if self.backend == 'ray' else 1}, seed={self.seed}",
            f"  env steps per task: {self.inner_steps:_}; per outer step: {self.inner_steps * b:_} "
            f"({b} tasks); in total: {self.inner_steps * b * o:_} ({o} outer steps)",
        ]
        if self.total_updates is not None:
            lines.append(
                f"  gradient updates per task: {self.total_updates:_} ({self.updates_per_rollout:_} per "
                f"rollout x {self.n_rollouts:_} rollouts); per outer step: {self.total_updates * b:_}; "
                f"in total: {self.total_updates * b * o:_}"
            )
        else:
            lines.append(f"  gradient updates per task: no exact count ({self.budget_note})")
        params = self.tasks_generator_params
        if (
            issubclass(self.tasks_generator_cls, TaskGenerator)
            and params.get("task_callable") is not None
        ):
            lines.append(
                f"  revisits: ratio {params.get('revisit_ratio', 0.15)}, from meta step "
                f"{params.get('revisit_start', 1)}, sampling {params.get('sampling_method', 'random')}"
                f"{'' if params.get('history', True) else ' (history off: no revisits)'}"
            )
        lines.append(f"  meta-updates: {o} (lr {self.get_meta_lr(0):g} at step 0)")
        return "\n".join(lines)

    def _log_startup_summary(self) -> None:
        if self.verbose >= 1:
            print(self.budget_summary())

    # ------------------------------------------------------------------ schedule
    def get_meta_lr(self, outer_step: int) -> float:
        total = max(self.outer_steps - 1, 1)
        lr = float(self.meta_lr_schedule(outer_step, total))
        self.current_meta_lr = lr
        return lr

    def sync_meta_optimizer_lr(self, meta_lr: float, force: bool = False) -> None:
        """Set the meta-optimizer's lr when a schedule changed it."""
        if self.meta_optimizer is None or (self.is_constant_meta_lr and not force):
            return
        if force or self._last_optimizer_meta_lr != meta_lr:
            for group in self.meta_optimizer.param_groups:
                group["lr"] = meta_lr
            self._last_optimizer_meta_lr = meta_lr

    # ------------------------------------------------------------------ the meta-update
    @abstractmethod
    def meta_update(self, results: Iterable[AdaptedResult], outer_step: int) -> None:
        """Fold the adapted results (yielded in task order) into the meta policy.

        ``results`` is an iterator: consume it once, in order. Each result's ``weights`` maps the
        policy's parameter names to numpy arrays. Nothing may be written to the meta policy before
        the last result was read (a failing task must leave the meta weights untouched).
        """

    # ------------------------------------------------------------------ learning
    def learn(
        self: SelfMeta,
        outer_steps: int | None = None,
        reset_task_history_before_learning: bool = True,
        task_seed_mode: Literal["generator", "meta_step"] = "generator",
        tb_log_name: str | None = None,
        log_inner_tasks: bool = False,
        inner_tb_log_root: str | None = None,
        save_freq: int = 0,
        save_path: str | None = None,
        save_prefix: str = "meta_ckpt",
        save_final: bool = True,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
        keep_last: int | None = None,
        callback: MaybeCallback = None,
        eval_freq: int = 0,
        eval_kwargs: dict[str, Any] | None = None,
    ) -> SelfMeta:
        """Meta-train: ``outer_steps`` meta-updates of ``task_batch_size`` inner loops each.

        :param outer_steps: total outer steps of this run (overrides the constructor's).
        :param reset_task_history_before_learning: forget past tasks first (ignored when resuming).
        :param task_seed_mode: ``"generator"`` (the generator's own RNG) or ``"meta_step"``
            (task seed = meta step).
        :param tb_log_name: TensorBoard run name (default: the class name).
        :param log_inner_tasks: write each task's SB3 TensorBoard log.
        :param inner_tb_log_root: folder of those logs (default: ``inner/`` in the run's TensorBoard
            folder, or ``./inner-logs`` without ``tensorboard_logs``).
        :param save_freq: checkpoint every ``save_freq`` outer steps (0: never).
        :param save_path: folder of checkpoints; nothing is saved without it.
        :param save_prefix: checkpoint folder names: ``{save_prefix}_outer_{N}``.
        :param save_final: write a checkpoint at the end (with ``save_path``).
        :param reset_num_timesteps: start counting outer steps from 0. ``False`` continues a loaded
            or interrupted run up to ``outer_steps``, drawing the tasks an uninterrupted run would draw.
        :param progress_bar: show a tqdm bar over outer steps (tasks/s, mean adaptation return).
        :param keep_last: keep only the newest ``keep_last`` checkpoints (``None``: keep all).
        :param callback: a :class:`~distributed_reptile.callbacks.MetaCallback`, a list of them or a
            ``CallbackList``; ``on_outer_step_end`` returning ``False`` stops the run after that step.
        :param eval_freq: meta-test evaluation on held-out tasks every ``eval_freq`` outer steps
            (0: never), through :class:`~distributed_reptile.evaluation.MetaEvalCallback`.
        :param eval_kwargs: that callback's arguments (family, n_tasks, budgets, episodes...).
        :return: self
        """
        if outer_steps is not None:
            self.outer_steps = _positive_int("outer_steps", outer_steps)
        if task_seed_mode not in TASK_SEED_MODES:
            raise ValueError(
                f"task_seed_mode must be one of {TASK_SEED_MODES}, got {task_seed_mode!r}."
            )
        if save_freq < 0:
            raise ValueError(f"save_freq must be >= 0, got {save_freq}.")
        if (save_freq > 0) and save_path is None:
            raise ValueError("save_freq > 0 needs save_path: the folder where checkpoints go.")
        if keep_last is not None:
            _positive_int("keep_last", keep_last)
        if reset_num_timesteps:
            self.num_outer_steps = 0
            self.step_records = []
            if reset_task_history_before_learning:
                self.task_source.reset_history()
        self._task_seed_mode = task_seed_mode
        run_name = tb_log_name or type(self).__name__
        run_stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_name)}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"
        inner_root = None
        if log_inner_tasks:
            if inner_tb_log_root is not None:
                inner_root = os.path.join(inner_tb_log_root, run_stem)
            elif self.tensorboard_logs is not None:
                inner_root = os.path.join(self.tensorboard_logs, run_stem, "inner")
            else:
                inner_root = os.path.join("inner-logs", run_stem)
        if self.tensorboard_logs is not None:
            self.meta_logger = configure(
                os.path.join(self.tensorboard_logs, run_stem), ["tensorboard"]
            )

        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.outer_steps, initial=self.num_outer_steps, unit="outer step")
        self._bar = bar
        if eval_freq < 0:
            raise ValueError(f"eval_freq must be >= 0, got {eval_freq}.")
        callbacks = to_callback(callback)
        if eval_freq > 0:
            from distributed_reptile.evaluation import MetaEvalCallback

            callbacks.callbacks.append(MetaEvalCallback(eval_freq, **(eval_kwargs or {})))
        checkpointer = None
        if save_freq > 0:
            assert save_path is not None
            checkpointer = CheckpointCallback(save_freq, save_path, save_prefix, keep_last)
            callbacks.callbacks.append(checkpointer)
        callbacks.init_callback(self)
        try:
            callbacks.on_training_start()
            while self.num_outer_steps < self.outer_steps:
                callbacks.on_outer_step_start(self.num_outer_steps)
                record = self._outer_step(self.num_outer_steps, inner_root)
                self.num_outer_steps += 1
                self.step_records.append(record)
                self._log_record(record)
                if bar is not None:
                    bar.set_postfix(
                        tasks_per_s=f"{record['tasks_per_second']:.2f}",
                        ep_return=f"{record['ep_return_mean']:.2f}",
                    )
                    bar.update(1)
                if not callbacks.on_outer_step_end(record):
                    if self.verbose >= 1:
                        print(f"stopped by a callback after outer step {self.num_outer_steps}")
                    break
            last_saved = checkpointer.last_saved_step if checkpointer is not None else -1
            if save_final and save_path is not None and last_saved != self.num_outer_steps:
                self.save_checkpoint(save_path, save_prefix, keep_last)
            callbacks.on_training_end()
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
            if self.meta_logger is not None:
                self.meta_logger.close()
                self.meta_logger = None
        return self

    def _outer_step(self, outer: int, inner_root: str | None) -> dict[str, Any]:
        t_start = time.perf_counter()
        specs = self.task_source.sample_specs(*self._draw_args(outer))
        # The next steps' tasks do not depend on this step: a Ray task source draws them (a few
        # steps per call) while the inner loops run.
        last = min(outer + 1 + DRAW_AHEAD_STEPS, self.outer_steps)
        self.task_source.prefetch([self._draw_args(o) for o in range(outer + 1, last)])
        jobs = [
            TaskJob(
                spec=spec,
                task_seed=task_seed(self.seed, spec.meta_step),
                index=i,
                tb_log_dir=None
                if inner_root is None
                else os.path.join(
                    inner_root, f"inner_outer_{outer + 1}_task_{i + 1}_meta_{spec.meta_step}"
                ),
            )
            for i, spec in enumerate(specs)
        ]
        t_sampled = time.perf_counter()
        meta_weights = module_to_numpy(self.meta_policy)
        retry_log = getattr(self.runner, "retry_events", [])
        retries_before = len(retry_log)
        stats: dict[str, Any] = {"wait": 0.0, "results": [], "skipped": []}
        results = self._checked_results(self.runner.run_batch(jobs, meta_weights), stats)
        t_update = time.perf_counter()
        self.meta_update(results, outer)
        t_done = time.perf_counter()
        del meta_weights

        res = stats["results"]
        returns = [r for rec in res for r in rec["episode_returns"]]
        step_seconds = t_done - t_start
        return {
            "outer_step": outer + 1,
            "meta_lr": self.current_meta_lr,
            "ep_return_mean": float(np.mean(returns)) if returns else float("nan"),
            "ep_return_min": float(np.min(returns)) if returns else float("nan"),
            "ep_return_max": float(np.max(returns)) if returns else float("nan"),
            "episodes": len(returns),
            "env_steps": int(sum(rec["env_steps"] for rec in res)),
            "inner_seconds": float(sum(rec["timings"].get("learn", 0.0) for rec in res)),
            "wait_seconds": stats["wait"],
            "meta_update_seconds": max(t_done - t_update - stats["wait"], 0.0),
            "sample_seconds": t_sampled - t_start,
            "step_seconds": step_seconds,
            "tasks_per_second": len(res) / step_seconds if step_seconds > 0 else float("nan"),
            "update_norm": self._last_update_norm,
            "tasks": [s.describe() for s in specs],
            "revisits": sum(1 for s in specs if s.revisit),
            "skipped_tasks": stats["skipped"],
            "retries": list(retry_log[retries_before:]),
            "task_pids": [rec["worker"].get("pid") for rec in res],
            "tasks_per_node": dict(
                Counter(
                    rec["worker"].get("node_id", rec["worker"].get("hostname", "?")) for rec in res
                )
            ),
            "task_timings": [rec["timings"] for rec in res],
        }

    def _draw_args(self, outer: int) -> tuple[list[int], list[int | None]]:
        """Meta steps and seeds of outer step ``outer``'s tasks."""
        b = self.task_batch_size
        meta_steps = [outer * b + i for i in range(b)]
        seeds: list[int | None] = (
            list(meta_steps) if self._task_seed_mode == "meta_step" else [None] * b
        )
        return meta_steps, seeds

    def _checked_results(
        self, results: Iterator[AdaptedResult], stats: dict[str, Any]
    ) -> Iterator[AdaptedResult]:
        """Yield results in order, timing the driver's waits and refusing non-finite weights."""
        while True:
            t0 = time.perf_counter()
            try:
                result = next(results)
            except StopIteration:
                stats["wait"] += time.perf_counter() - t0
                return
            stats["wait"] += time.perf_counter() - t0
            bad = non_finite_names(result.weights)
            if bad:
                msg = (
                    f"Task meta_step={result.meta_step} (info={result.task.get('info')}) produced non-finite "
                    f"adapted weights in {bad[:5]}; they were not folded into the meta weights. Lower the "
                    "inner learning rate or clip gradients (max_grad_norm), or pass on_nonfinite='skip'."
                )
                if self.on_nonfinite == "raise":
                    close = getattr(results, "close", None)
                    if close is not None:
                        close()  # lets the runner wait for the tasks still in flight
                    raise NonFiniteWeightsError(msg)
                warnings.warn(msg + " Skipped.", RuntimeWarning, stacklevel=2)
                stats["skipped"].append(result.meta_step)
                continue
            stats["results"].append(
                {
                    "episode_returns": result.episode_returns,
                    "env_steps": result.env_steps,
                    "timings": result.timings,
                    "worker": result.worker,
                }
            )
            yield result

    def _log_record(self, record: dict[str, Any]) -> None:
        if self.verbose >= 1:
            line = (
                f"[outer {record['outer_step']}/{self.outer_steps}] return {record['ep_return_mean']:.2f} "
                f"(min {record['ep_return_min']:.2f}, max {record['ep_return_max']:.2f}), "
                f"{record['env_steps']} env steps, {record['step_seconds']:.2f}s "
                f"(waited {record['wait_seconds']:.2f}s, meta-update {record['meta_update_seconds'] * 1e3:.1f}ms)"
            )
            if self._bar is not None:
                self._bar.write(line)
            else:
                print(line)
        if self.meta_logger is None:
            return
        log = self.meta_logger
        step = record["outer_step"]
        log.record("meta/outer_step", step)
        log.record("meta/meta_lr", record["meta_lr"])
        log.record("meta/update_norm", record["update_norm"])
        log.record("meta/revisits", record["revisits"])
        log.record("meta/total_env_steps_seen", step * self.inner_steps * self.task_batch_size)
        for key in ("ep_return_mean", "ep_return_min", "ep_return_max"):
            if not math.isnan(record[key]):
                log.record(f"adaptation/{key}", record[key])
        log.record("adaptation/env_steps", record["env_steps"])
        log.record("time/inner_seconds", record["inner_seconds"])
        log.record("time/wait_seconds", record["wait_seconds"])
        log.record("time/meta_update_seconds", record["meta_update_seconds"])
        log.record("time/outer_step_seconds", record["step_seconds"])
        log.record("time/tasks_per_second", record["tasks_per_second"])
        if self.total_updates is not None and self.updates_per_rollout is not None:
            log.record("budget/updates_per_rollout_per_task", self.updates_per_rollout)
            log.record("budget/updates_per_task", self.total_updates)
            log.record("budget/updates_per_outer_step", self.total_updates * self.task_batch_size)
        log.dump(step=step)

    # ------------------------------------------------------------------ SB3-like surface
    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """The meta policy's action (SB3 ``predict``)."""
        return self.meta_algo.predict(
            observation, state=state, episode_start=episode_start, deterministic=deterministic
        )

    def get_env(self) -> Any:
        """The meta model's env (the first task's)."""
        return self.meta_algo.get_env()

    def set_random_seed(self, seed: int | None = None) -> None:
        """Change the run seed (future task seeds derive from it) and seed the meta model."""
        if seed is None:
            return
        self.seed = int(seed)
        self.meta_algo.set_random_seed(seed)

    @property
    def policy(self) -> Any:
        return self.meta_policy

    def save_meta_algo(self, path: str | os.PathLike[str]) -> None:
        """Save the meta model with SB3's own ``.save()`` (load it with e.g. ``PPO.load``)."""
        self.meta_algo.save(Path(path))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a complete, resumable checkpoint folder at ``path`` (atomically)."""
        return ckpt.write_checkpoint(path, self._write_checkpoint_files)

    def save_checkpoint(
        self, folder: str, prefix: str = "meta_ckpt", keep_last: int | None = None
    ) -> Path:
        """Save ``{folder}/{prefix}_outer_{N}`` and keep only the newest ``keep_last`` checkpoints."""
        out = self.save(os.path.join(folder, f"{prefix}_outer_{self.num_outer_steps}"))
        ckpt.prune_checkpoints(folder, prefix, keep_last)
        if self.verbose >= 1:
            print(f"checkpoint: {out}")
        return out

    def _write_checkpoint_files(self, tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.meta_policy.state_dict().items()},
            str(tmp / "meta_policy.safetensors"),
        )
        if self.meta_optimizer is not None:
            th.save(self.meta_optimizer.state_dict(), tmp / "meta_optimizer.pt")
        with open(tmp / "task_source.pkl", "wb") as fh:
            cloudpickle.dump(self.task_source.state_dict(), fh)
        try:
            config = cloudpickle.dumps(self._init_kwargs)
        except Exception as exc:  # unpicklable user objects: load() then needs them passed again
            warnings.warn(
                f"Trainer arguments could not be pickled ({exc}); pass them to load().",
                stacklevel=3,
            )
        else:
            (tmp / "config.pkl").write_bytes(config)
        state = {
            "format_version": ckpt.FORMAT_VERSION,
            "algorithm_class": type(self).__name__,
            "num_outer_steps": self.num_outer_steps,
            "outer_steps": self.outer_steps,
            "seed": self.seed,
            "task_seed_mode": self._task_seed_mode,
            "meta_lr_current": self.current_meta_lr,
            "last_optimizer_meta_lr": self._last_optimizer_meta_lr,
            "config": _json_safe(self._init_kwargs),
            "versions": library_versions(),
            "step_records": _json_safe(
                [{k: v for k, v in r.items() if k != "task_timings"} for r in self.step_records]
            ),
        }
        (tmp / "trainer_state.json").write_text(
            json.dumps(state, indent=2, sort_keys=True), encoding="utf-8"
        )
        self.meta_algo.save(tmp / "meta_algo.zip")

    @classmethod
    def load(cls: type[SelfMeta], path: str | os.PathLike[str], **overrides: Any) -> SelfMeta:
        """A trainer restored from a checkpoint folder, ready to ``learn(reset_num_timesteps=False)``.

        Constructor arguments come from the checkpoint's ``config.pkl``; ``overrides`` replace them
        (e.g. ``backend``, ``num_workers``, ``ray_address``), and must supply them all when the
        checkpoint could not store them.
        """
        folder = Path(path)
        ckpt.verify_checkpoint(folder)
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        kwargs: dict[str, Any] = {}
        if (folder / "config.pkl").exists():
            kwargs = pickle.loads((folder / "config.pkl").read_bytes())
        kwargs.update(overrides)
        kwargs["seed"] = state["seed"]
        trainer = cls(**kwargs)
        try:
            trainer.load_checkpoint_state(folder, state)
            if "outer_steps" in overrides:
                trainer.outer_steps = _positive_int("outer_steps", overrides["outer_steps"])
        except BaseException:
            trainer.close()
            raise
        return trainer

    def load_checkpoint_state(self, folder: Path, state: dict[str, Any] | None = None) -> None:
        """Restore weights, optimizer, schedule position and task-generator state from ``folder``."""
        from safetensors.torch import load_file

        ckpt.verify_checkpoint(folder)
        if state is None:
            state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        weights = load_file(str(folder / "meta_policy.safetensors"))
        self.meta_policy.load_state_dict(weights)
        opt_path = folder / "meta_optimizer.pt"
        if self.meta_optimizer is not None:
            if not opt_path.exists():
                raise ckpt.CheckpointError(
                    f"{folder} has no meta-optimizer state but use_meta_optimizer=True."
                )
            self.meta_optimizer.load_state_dict(th.load(opt_path, weights_only=True))
        with open(folder / "task_source.pkl", "rb") as fh:
            self.task_source.load_state_dict(pickle.load(fh))
        self.num_outer_steps = int(state["num_outer_steps"])
        self.outer_steps = int(state["outer_steps"])
        self.seed = int(state["seed"])
        self._task_seed_mode = state.get("task_seed_mode", "generator")
        self.current_meta_lr = state.get("meta_lr_current")
        self._last_optimizer_meta_lr = state.get("last_optimizer_meta_lr")
        self.step_records = list(state.get("step_records", []))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the workers and the task-source actor; stop the local Ray this trainer started, or
        disconnect from the cluster it joined (the cluster keeps running)."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        source = getattr(self, "task_source", None)
        if source is not None and hasattr(source, "close"):
            source.close()
        meta_algo = getattr(self, "meta_algo", None)
        if meta_algo is not None and meta_algo.get_env() is not None:
            meta_algo.get_env().close()
        if self._ray_mode in ("started", "joined"):
            import ray

            ray.shutdown()
            self._ray_mode = "none"

    def __enter__(self: SelfMeta) -> SelfMeta:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a checkpoint depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("distributed-reptile", "torch", "stable-baselines3", "gymnasium", "ray", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer | np.floating):
        return _json_safe(value.item())
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


__all__ = ["BaseMetaAlgorithm", "NonFiniteWeightsError", "library_versions"]
