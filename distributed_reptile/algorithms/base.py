"""BaseMetaAlgorithm: the outer loop, the SB3-like surface and the callbacks.

Where inner loops run is injected: the trainer opens the execution backend named by
``backend`` (:func:`distributed_reptile.execution.open_backend`) and uses the task source and the
runner it returns, never Ray itself. Checkpoint files are written and read by
:mod:`distributed_reptile.checkpoint`, the start-up summary comes from
:mod:`distributed_reptile.budget`, and the step record is a
:class:`~distributed_reptile.records.StepRecord` logged by a
:class:`~distributed_reptile.records.StepLogger`.
"""

from __future__ import annotations

import functools
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, TypeVar

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import get_device

from distributed_reptile.algorithms.results import (
    NonFiniteWeightsError,
    step_jobs,
    step_results,
)
from distributed_reptile.algorithms.surface import SB3Surface
from distributed_reptile.budget import UpdateBudget, startup_summary
from distributed_reptile.callbacks import MaybeCallback
from distributed_reptile.checkpoint import library_versions
from distributed_reptile.execution import backend_names, open_backend, raise_if_interrupted
from distributed_reptile.execution.base import Backend
from distributed_reptile.execution.registry import DEFAULT_BACKEND
from distributed_reptile.inner.learner import AdaptedResult, InnerLearner
from distributed_reptile.learn_options import learn_callbacks, log_folders
from distributed_reptile.records import StepLogger, StepRecord
from distributed_reptile.runners.base import Runner
from distributed_reptile.sb3_models import build_sb3_model
from distributed_reptile.schedules import LRSchedule, normalize_lr_schedule
from distributed_reptile.seeding import (
    derive_seed,
    fresh_run_seed,
    generator_seed_from_run_seed,
)
from distributed_reptile.settings import (
    SB3_METHODS,
    check_positive_int,
    is_sb3_like,
    validate_trainer_settings,
)
from distributed_reptile.tasks.generator import TaskGenerator

SelfMeta = TypeVar("SelfMeta", bound="BaseMetaAlgorithm")

TASK_SEED_MODES = ("generator", "meta_step")
_INIT_STREAM = 0x1417
#: Outer steps whose tasks a task source that can undo its draws draws ahead, in one call.
DRAW_AHEAD_STEPS = 8


class BaseMetaAlgorithm(SB3Surface, ABC):
    """Generic first-order meta-RL trainer over SB3 inner learners.

    Each outer step samples ``task_batch_size`` tasks from the task generator, adapts the meta
    policy to each with SB3's ``learn`` (in-process or on Ray actors), and hands the adapted weights,
    in task order, to :meth:`meta_update`. Mirrors SB3's API: ``learn``, ``predict``, ``get_env``,
    ``set_random_seed``, ``save``/``load``.

    The arguments are documented once, with their checks, in
    :class:`~distributed_reptile.settings.TrainerSettings`.
    """

    combine: ClassVar[Literal["all", "sum"]] = "all"  #: "sum": see first_order.py, results.py

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
        num_workers: int | Literal["auto"] = 1,
        backend: str = DEFAULT_BACKEND,
        seed: int | None = None,
        ray_address: str | None = None,
        worker_resources: dict[str, Any] | None = None,
        reuse_models: bool = True,
        on_nonfinite: Literal["raise", "skip"] = "raise",
        max_worker_restarts: int = 3,
        max_task_retries: int = 3,
        task_retries: int = 2,
        task_timeout_s: float | None = None,
        tasks_per_call: int | Literal["auto", "guided"] = 1,
        node_reduction: bool | Literal["auto"] = "auto",
        connect_timeout_s: float | None = 30.0,
        worker_start_timeout_s: float | None = 600.0,
        ray_init_kwargs: dict[str, Any] | None = None,
        inner_learner_cls: type[InnerLearner] = InnerLearner,
    ) -> None:
        #: The constructor's arguments as given (stored with checkpoints).
        self.init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.settings = settings = validate_trainer_settings(self.init_kwargs)
        self.tasks_generator_cls = tasks_generator_cls
        self.tasks_generator_params = settings.tasks_generator_params
        self.rl_algorithm = rl_algorithm
        self.rl_algo_kwargs = settings.rl_algo_kwargs
        self.inner_steps = settings.inner_steps
        self.outer_steps = settings.outer_steps
        self.task_batch_size = settings.task_batch_size
        self.inner_loop_params = settings.inner_loop_params
        self.ignored_layer_prefixes = list(ignored_layers or [])
        self.ignore_optimizer_params = ignore_optimizer_params
        self.use_meta_optimizer = use_meta_optimizer
        self.meta_optimizer_cls = meta_optimizer_cls
        self.meta_optimizer_kwargs = settings.meta_optimizer_kwargs
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
        self.num_workers = settings.num_workers
        self.backend = backend
        self.seed = int(seed) if seed is not None else fresh_run_seed()
        self.reuse_models = reuse_models
        self.on_nonfinite = on_nonfinite
        self.inner_learner_cls = inner_learner_cls

        self.num_outer_steps = 0  # outer steps completed (the schedule position)
        #: Norm of the last meta-update (set by :meth:`meta_update`).
        self.last_update_norm = float("nan")
        self._runner: Runner | None = None
        self._closed = False
        self._task_seed_mode = "generator"
        self._logger: StepLogger | None = None

        try:
            self.execution: Backend = open_backend(backend, settings.execution())
            self.task_source = self.execution.make_task_source(
                tasks_generator_cls, self._generator_params()
            )
            first_env = self._bootstrap_env()
            self.meta_algo = self.instantiate_model(first_env)
            self.meta_policy = self.meta_algo.policy
            self.ignored_params = self._get_ignored_params(self.ignored_layer_prefixes)
            self.meta_optimizer = self._build_meta_optimizer()
            self.update_budget = UpdateBudget.of(self.meta_algo, self.inner_steps)
            if self.verbose >= 1:
                print(self.budget_summary())
            _ = self.runner  # start the workers now: errors surface here, not mid-run
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ construction
    def _generator_params(self) -> dict[str, Any]:
        params = dict(self.tasks_generator_params)
        if "generator_seed" not in params and issubclass(self.tasks_generator_cls, TaskGenerator):
            params["generator_seed"] = generator_seed_from_run_seed(self.seed)
        return params

    def _bootstrap_env(self) -> Any:
        """The first task's env (meta step 0), used to build the meta model; the history is then reset."""
        spec = self.task_source.sample_specs([0], [None])[0]
        self.task_source.reset_history()
        return spec.build_env()

    def instantiate_model(
        self, env: Any, rl_algo_kwargs: dict[str, Any] | None = None
    ) -> BaseAlgorithm:
        """An SB3 model on ``env``; the meta model's initial weights come from ``seed``."""
        kwargs = rl_algo_kwargs if rl_algo_kwargs is not None else self.rl_algo_kwargs
        return build_sb3_model(
            self.rl_algorithm,
            kwargs,
            env,
            seed=derive_seed(self.seed, _INIT_STREAM),
            device=kwargs.get("device", self.device),
        )

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
        """The runner of inner loops, from the execution backend (created on first use)."""
        if self._runner is None:
            self._runner = self.execution.make_runner(self._learner_factory())
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

    def budget_summary(self) -> str:
        """The start-up summary: env steps and exact SB3 gradient updates per task, step and run."""
        return startup_summary(self)

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

        ``results`` is an iterator: consume it once, in order. With ``combine = "all"`` each
        result's ``weights`` maps parameter names to numpy arrays; with ``"sum"`` results carry
        statistics and the workers' exact sums (``FirstOrderMetaAlgorithm.summed``). Nothing may be
        written to the meta policy before the last result was read. Set :attr:`last_update_norm`.
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
        step_records_path: str | os.PathLike[str] | None = None,
        keep_records: int | None = None,
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
        :param step_records_path: the step records' append-only file, a JSON line per outer step
            (default: ``{save_path}/{save_prefix}_step_records.jsonl``, or a continued run's own).
        :param keep_records: newest step records :attr:`step_records` keeps (1000 until set).
        :return: self
        """
        if outer_steps is not None:
            self.outer_steps = check_positive_int(outer_steps, "outer_steps")
        if task_seed_mode not in TASK_SEED_MODES:
            raise ValueError(
                f"task_seed_mode must be one of {TASK_SEED_MODES}, got {task_seed_mode!r}."
            )
        callbacks, checkpointer = learn_callbacks(
            callback,
            save_freq=save_freq,
            save_path=save_path,
            save_prefix=save_prefix,
            keep_last=keep_last,
            eval_freq=eval_freq,
            eval_kwargs=eval_kwargs,
            step_records_path=step_records_path,
            keep_records=keep_records,
            fresh=reset_num_timesteps,
        )
        if reset_num_timesteps:
            self.num_outer_steps = 0
            self.step_history.reset()
            if reset_task_history_before_learning:
                self.task_source.reset_history()
        self._task_seed_mode = task_seed_mode
        run_stem, inner_root = log_folders(
            tb_log_name or type(self).__name__,
            self.tensorboard_logs,
            log_inner_tasks,
            inner_tb_log_root,
        )
        self._logger = StepLogger.for_run(self, run_stem, progress_bar)
        callbacks.init_callback(self)
        try:
            callbacks.on_training_start()
            while self.num_outer_steps < self.outer_steps:
                callbacks.on_outer_step_start(self.num_outer_steps)
                record = self._outer_step(self.num_outer_steps, inner_root)
                self.num_outer_steps += 1
                self.step_history.add(record)
                self._logger.log(record)
                if not callbacks.on_outer_step_end(record):
                    if self.verbose >= 1:
                        print(f"stopped by a callback after outer step {self.num_outer_steps}")
                    break
            last_saved = checkpointer.last_saved_step if checkpointer is not None else -1
            if save_final and save_path is not None and last_saved != self.num_outer_steps:
                self.save_checkpoint(save_path, save_prefix, keep_last)
            callbacks.on_training_end()
        finally:
            self._logger.close()
            self._logger = None
            raise_if_interrupted(self, checkpointer)  # a lost process: RunInterruptedError
        return self

    def _outer_step(self, outer: int, inner_root: str | None) -> StepRecord:
        t_start = time.perf_counter()
        specs = self.task_source.sample_specs(*self._draw_args(outer))
        # The next steps' tasks do not depend on this step: a task source that can undo its draws
        # draws them (a few steps per call) while the inner loops run.
        last = min(outer + 1 + DRAW_AHEAD_STEPS, self.outer_steps)
        self.task_source.prefetch([self._draw_args(o) for o in range(outer + 1, last)])
        jobs = step_jobs(specs, self.seed, outer, inner_root)
        t_sampled = time.perf_counter()
        retries_before = len(self.runner.retry_events)
        stream = step_results(self, jobs)
        t_update = time.perf_counter()
        self.meta_update(stream, outer)
        t_done = time.perf_counter()
        return StepRecord.build(
            outer + 1,
            self.current_meta_lr,
            specs,
            stream.outcomes,
            started=t_start,
            sampled=t_sampled,
            updated=t_update,
            done=t_done,
            wait_seconds=stream.wait_seconds,
            update_norm=self.last_update_norm,
            skipped_tasks=stream.skipped,
            retries=self.runner.retry_events[retries_before:],
        )

    def _draw_args(self, outer: int) -> tuple[list[int], list[int | None]]:
        """Meta steps and seeds of outer step ``outer``'s tasks."""
        b = self.task_batch_size
        meta_steps = [outer * b + i for i in range(b)]
        seeds: list[int | None] = (
            list(meta_steps) if self._task_seed_mode == "meta_step" else [None] * b
        )
        return meta_steps, seeds

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the workers and the task source, then close the execution backend (a local Ray
        instance this trainer started is stopped; a cluster it joined keeps running)."""
        if self._closed:
            return
        self._closed = True
        self.close_runner()
        source = getattr(self, "task_source", None)
        if source is not None and hasattr(source, "close"):
            source.close()
        meta_algo = getattr(self, "meta_algo", None)
        if meta_algo is not None and meta_algo.get_env() is not None:
            meta_algo.get_env().close()
        execution = getattr(self, "execution", None)
        if execution is not None:
            execution.close()

    def close_runner(self) -> None:
        """Stop the inner-loop workers; the next use of :attr:`runner` starts new ones."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.close()

    def __enter__(self: SelfMeta) -> SelfMeta:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_trainer(path: str | os.PathLike[str], **overrides: Any) -> BaseMetaAlgorithm:
    """The trainer a checkpoint holds, built as the class it records (see :meth:`BaseMetaAlgorithm.load`)."""
    return BaseMetaAlgorithm.load(path, **overrides)


#: Backends the ``backend`` argument accepts (see :mod:`distributed_reptile.execution`).
BACKENDS = backend_names()

__all__ = [
    "BACKENDS",
    "SB3_METHODS",
    "BaseMetaAlgorithm",
    "NonFiniteWeightsError",
    "is_sb3_like",
    "library_versions",
    "load_trainer",
]
