"""InnerLearner: one task's inner loop (SB3 ``.learn()``), the same code in-process and in a Ray actor."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import check_for_correct_spaces

from distributed_reptile.reduction import FixedSum
from distributed_reptile.sb3_models import build_sb3_model
from distributed_reptile.tasks.episode_metrics import INFO_KEY
from distributed_reptile.tasks.spec import TaskSpec
from distributed_reptile.weights import NumpyWeights, load_numpy_into_module, parameters_to_numpy


@dataclass
class TaskJob:
    """One unit of inner-loop work: a task, its seed and its place in the batch.

    :param spec: the task.
    :param task_seed: seed of the inner learner for this task.
    :param index: position of the job in its batch (results come back in this order).
    :param tb_log_dir: folder of this task's SB3 TensorBoard log (``None``: no log).
    :param inner_steps: env steps of this job's inner loop (``None``: the learner's own; 0: no learning).
    :param eval_episodes: after adapting, run this many episodes on a fresh env of the task and
        report their returns (meta-test evaluation).
    :param eval_deterministic: use deterministic actions in those episodes.
    :param return_weights: send the adapted parameters back (evaluation jobs do not need them).
    :param eval_budgets: adaptation budgets in env steps (meta-test evaluation): adapt and
        evaluate ``eval_episodes`` episodes after each, from the same start. Where the learner
        allows it (:meth:`InnerLearner.can_chain`) the budgets are points along one adaptation
        run, which gives bit for bit the returns of separate runs at a fraction of the cost;
        otherwise each budget adapts afresh. ``inner_steps`` is then ignored and
        ``AdaptedResult.eval_returns_by_budget`` holds one list of returns per budget.
    """

    spec: TaskSpec
    task_seed: int
    index: int
    tb_log_dir: str | None = None
    inner_steps: int | None = None
    eval_episodes: int = 0
    eval_deterministic: bool = True
    return_weights: bool = True
    eval_budgets: tuple[int, ...] | None = None


@dataclass
class AdaptedResult:
    """What a worker sends back: the adapted weights (numpy), or its share of a partial sum, and
    what happened on the way."""

    meta_step: int
    index: int
    weights: NumpyWeights
    episode_returns: list[float]
    env_steps: int
    timings: dict[str, float] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    eval_returns: list[float] = field(default_factory=list)
    eval_returns_by_budget: list[list[float]] = field(default_factory=list)
    #: Per budget, the episode metrics the task's env declares (``{"success": [1.0, 0.0, ...]}``:
    #: see :mod:`distributed_reptile.tasks.episode_metrics`), one value per evaluation episode.
    eval_metrics_by_budget: list[dict[str, list[float]]] = field(default_factory=list)
    #: Set when the runner was given a reducer (an algorithm with ``combine = "sum"``): then the
    #: weights stay on the worker, ``weights`` is empty, the first result of each actor call
    #: carries the exact partial sum of the call's tasks (``None`` on the others), and
    #: ``nonfinite`` names the NaN or infinite adapted weights that kept this task out of it.
    partial: FixedSum | None = None
    nonfinite: list[str] = field(default_factory=list)
    #: With node reduction (see :class:`~distributed_reptile.runners.ray_runner.RayRunner`), the
    #: first result of each actor call carries, instead of ``partial``, where the call's partial
    #: sum was kept on the worker's node (a
    #: :class:`~distributed_reptile.runners.ray_actors.StoredSum`); the runner takes it off before
    #: handing the result over.
    sum_ref: Any = None


def _recursive_getattr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


class InnerLearner:
    """Runs the inner loop of one task at a time, reusing one SB3 model across tasks.

    Every task gets a fresh start, bit for bit the same as a newly built model's: the task's env,
    the meta weights in the whole policy (targets included), cleared optimizer states, restored
    extra tensors (SAC's entropy coefficient), an empty replay buffer, reset counters, then one
    seeding point (``task_seed``) right before ``learn(inner_steps, reset_num_timesteps=True)``.

    :param rl_algorithm: SB3 algorithm class (``PPO``, ``SAC``, ``sb3_contrib.TRPO``...).
    :param rl_algo_kwargs: its keyword arguments, ``policy`` included (default ``"MlpPolicy"``).
    :param inner_steps: env steps of one inner loop.
    :param inner_loop_params: extra keyword arguments of ``learn``.
    :param device: torch device of the task models.
    :param reuse_model: keep one model across tasks (``False`` builds a new one per task).
    :param torch_threads: torch intra-op threads while a task runs (1 keeps results independent of
        the machine and of how many workers share it).
    :param expected_spaces: ``(observation_space, action_space)`` of the meta policy, checked on every env.
    """

    def __init__(
        self,
        rl_algorithm: type[BaseAlgorithm],
        rl_algo_kwargs: Mapping[str, Any],
        inner_steps: int,
        inner_loop_params: Mapping[str, Any] | None = None,
        device: str = "cpu",
        reuse_model: bool = True,
        torch_threads: int | None = 1,
        expected_spaces: tuple[Any, Any] | None = None,
    ) -> None:
        self.rl_algorithm = rl_algorithm
        self.rl_algo_kwargs = dict(rl_algo_kwargs)
        self.inner_steps = int(inner_steps)
        self.inner_loop_params = dict(inner_loop_params or {})
        self.device = device
        self.reuse_model = reuse_model
        self.torch_threads = torch_threads
        self.expected_spaces = expected_spaces
        self.model: BaseAlgorithm | None = None
        self.meta_weights: NumpyWeights = {}
        #: The episode metrics of the last :meth:`evaluate` call (name -> one value per episode).
        self.last_eval_metrics: dict[str, list[float]] = {}
        self._fresh_tensors: dict[str, th.Tensor] = {}

    # ------------------------------------------------------------------ entry point
    def run(self, job: TaskJob, meta_weights: NumpyWeights) -> AdaptedResult:
        """Adapt the meta weights to ``job``'s task and return the adapted parameters."""
        previous_threads = th.get_num_threads()
        if self.torch_threads is not None and previous_threads != self.torch_threads:
            th.set_num_threads(self.torch_threads)
        t0 = time.perf_counter()
        env = job.spec.build_env()
        owns_env = job.spec.env is None
        try:
            self._check_spaces(env, job.spec)
            t_env = time.perf_counter()
            model = self.prepare_model(env)
            self.meta_weights = meta_weights
            self._fresh_start(model, job)
            t_ready = time.perf_counter()
            by_budget: list[list[float]] = []
            metrics_by_budget: list[dict[str, list[float]]] = []
            if job.eval_budgets is not None:
                by_budget = self._adapt_and_evaluate(
                    model, job, job.eval_budgets, metrics_by_budget
                )
            else:
                self._adapt(model, job.inner_steps, fresh=True)
            t_learn = time.perf_counter()
            adapted = job.inner_steps != 0 and job.eval_budgets is None
            weights = parameters_to_numpy(model.policy) if job.return_weights else {}
            returns = _episode_returns(model) if adapted else []
            env_steps = int(model.num_timesteps) if adapted else 0
            eval_returns = (
                self.evaluate(model, job)
                if job.eval_episodes > 0 and job.eval_budgets is None
                else []
            )
            t_eval = time.perf_counter()
        finally:
            self.meta_weights = {}
            if owns_env:
                env.close()
            if not self.reuse_model:
                self.model = None
            if self.torch_threads is not None and previous_threads != self.torch_threads:
                th.set_num_threads(previous_threads)
        return AdaptedResult(
            meta_step=job.spec.meta_step,
            index=job.index,
            weights=weights,
            episode_returns=returns,
            env_steps=env_steps,
            timings={
                "env_build": t_env - t0,
                "model_ready": t_ready - t_env,
                "learn": t_learn - t_ready,
                "evaluate": t_eval - t_learn,
                "total": time.perf_counter() - t0,
            },
            worker=_worker_info(),
            task=job.spec.describe(),
            eval_returns=eval_returns,
            eval_returns_by_budget=by_budget,
            eval_metrics_by_budget=metrics_by_budget,
        )

    def _fresh_start(self, model: BaseAlgorithm, job: TaskJob) -> None:
        """The meta weights and a new model's state in ``model``, seeded with ``job.task_seed``."""
        self.copy_meta_to_task(model)
        self.reset_task_state(model)
        self._set_task_logger(model, job.tb_log_dir)
        model.set_random_seed(job.task_seed)

    def _adapt(self, model: BaseAlgorithm, steps: int | None, fresh: bool) -> None:
        """``steps`` env steps of adaptation (``None``: the learner's ``inner_steps``): the inner
        loop from a fresh start, or (``fresh=False``) a continuation of the run so far."""
        default_steps = self.inner_steps
        if steps is not None:
            self.inner_steps = int(steps)
        try:
            if self.inner_steps <= 0:
                return
            if fresh:
                self.inner_adapt(model)
            else:
                params = dict(self.inner_loop_params)
                params["reset_num_timesteps"] = False
                model.learn(self.inner_steps, **params)
        finally:
            self.inner_steps = default_steps

    def _adapt_and_evaluate(
        self,
        model: BaseAlgorithm,
        job: TaskJob,
        budgets: tuple[int, ...],
        metrics: list[dict[str, list[float]]] | None = None,
    ) -> list[list[float]]:
        """Returns after each budget of adaptation (see ``TaskJob.eval_budgets``); the episode
        metrics of each budget are appended to ``metrics``."""
        chain = self.can_chain(model, job)
        out: list[list[float]] = []
        done = 0  # env steps of adaptation the model holds since its fresh start
        touched = False  # anything ran since the fresh start
        for steps in budgets:
            steps = int(steps)
            if touched and (not chain or steps < done):
                self._fresh_start(model, job)
                done, touched = 0, False
            if steps > done:
                self._adapt(model, steps - done, fresh=done == 0)
                done = steps
            self.last_eval_metrics = {}
            out.append(self.evaluate(model, job) if job.eval_episodes > 0 else [])
            if metrics is not None:
                metrics.append(dict(self.last_eval_metrics))
            touched = True
        return out

    def can_chain(self, model: BaseAlgorithm, job: TaskJob) -> bool:
        """Whether adapting ``a`` then ``b - a`` more env steps ends where adapting ``b`` from the
        start would, evaluation in between included: an on-policy SB3 learner with the default
        inner loop and evaluation, no callback, constant schedules, no gSDE, every budget a whole
        number of rollouts (SB3 finishes the rollout it started), and deterministic evaluation
        (which draws no random numbers). Its rollouts and updates then do not depend on the total
        length of the run."""
        from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

        if not job.eval_deterministic or "callback" in self.inner_loop_params:
            return False
        for method in ("inner_adapt", "evaluate"):
            if getattr(type(self), method) is not getattr(InnerLearner, method):
                return False
        if not isinstance(model, OnPolicyAlgorithm) or getattr(model, "use_sde", False):
            return False
        rollout = int(model.n_steps) * int(model.n_envs)
        if any(int(b) % rollout for b in job.eval_budgets or ()):
            return False
        for name in ("lr_schedule", "clip_range", "clip_range_vf"):
            schedule = getattr(model, name, None)
            if callable(schedule) and len({float(schedule(p)) for p in (1.0, 0.5, 0.0)}) > 1:
                return False
        return True

    # ------------------------------------------------------------------ override points
    def build_model(self, env: Any) -> BaseAlgorithm:
        """A new SB3 model on ``env`` (same construction as the meta model); its device is the
        kwargs' ``device``, else the learner's."""
        model: BaseAlgorithm = build_sb3_model(
            self.rl_algorithm,
            self.rl_algo_kwargs,
            env,
            device=self.rl_algo_kwargs.get("device", self.device),
            quiet_logger=False,
        )
        return model

    def copy_meta_to_task(self, task_model: BaseAlgorithm) -> None:
        """Load the meta weights (``self.meta_weights``) into the whole task policy."""
        load_numpy_into_module(task_model.policy, self.meta_weights)

    def inner_adapt(self, task_model: BaseAlgorithm) -> None:
        """The inner loop: SB3 ``learn`` for ``inner_steps`` env steps from a fresh start."""
        params = dict(self.inner_loop_params)
        params["reset_num_timesteps"] = True
        task_model.learn(self.inner_steps, **params)

    def evaluate(self, task_model: BaseAlgorithm, job: TaskJob) -> list[float]:
        """Returns of ``job.eval_episodes`` episodes of the adapted policy on a fresh env of the
        task; the episode metrics its env declares go to :attr:`last_eval_metrics`."""
        env = job.spec.build_env()
        metrics: dict[str, list[float]] = {}

        def collect(local: dict[str, Any], _: dict[str, Any]) -> None:
            # an episode evaluate_policy counts: done, with the Monitor's episode record
            info = local["info"]
            if local["done"] and "episode" in info and INFO_KEY in info:
                for name, value in info[INFO_KEY].items():
                    metrics.setdefault(name, []).append(float(value))

        try:
            env.reset(seed=job.task_seed)
            env.action_space.seed(job.task_seed)
            returns, _ = evaluate_policy(
                task_model,
                Monitor(env),
                n_eval_episodes=job.eval_episodes,
                deterministic=job.eval_deterministic,
                return_episode_rewards=True,
                callback=collect,
            )
            self.last_eval_metrics = metrics
        finally:
            if job.spec.env is None:
                env.close()
        return [float(r) for r in np.atleast_1d(returns)]

    # ------------------------------------------------------------------ fresh start
    def prepare_model(self, env: Any) -> BaseAlgorithm:
        """Build the model on the first task (or every task without reuse); afterwards swap the env."""
        if self.model is None:
            self.model = self.build_model(env)
            self._snapshot_fresh_tensors(self.model)
        else:
            self.model.set_env(env, force_reset=True)
        return self.model

    def reset_task_state(self, model: BaseAlgorithm) -> None:
        """Give ``model`` the optimizer, buffer and counter state of a newly built model."""
        state_dicts, tensors = _torch_save_params(model)
        for name in state_dicts:
            obj = _recursive_getattr(model, name)
            if isinstance(obj, th.optim.Optimizer):
                obj.state.clear()
        with th.no_grad():
            for name in tensors:
                if name in self._fresh_tensors:
                    _recursive_getattr(model, name).copy_(self._fresh_tensors[name])
        buffer = getattr(model, "replay_buffer", None)
        if buffer is not None:
            buffer.reset()
        model._n_updates = 0
        if hasattr(model, "_n_calls"):
            model._n_calls = 0

    def _snapshot_fresh_tensors(self, model: BaseAlgorithm) -> None:
        _, tensors = _torch_save_params(model)
        self._fresh_tensors = {
            name: _recursive_getattr(model, name).detach().clone() for name in tensors
        }

    def _set_task_logger(self, model: BaseAlgorithm, tb_log_dir: str | None) -> None:
        if not hasattr(model, "set_logger"):
            return
        if tb_log_dir is not None:
            model.set_logger(configure(tb_log_dir, ["tensorboard"]))
        else:
            # A logger with no outputs: SB3 would otherwise make an empty /tmp/SB3-* folder per task.
            model.set_logger(Logger(folder=None, output_formats=[]))

    def _check_spaces(self, env: Any, spec: TaskSpec) -> None:
        if self.expected_spaces is None:
            return
        obs_space, act_space = self.expected_spaces
        expected = (_box_key(obs_space), _box_key(act_space))
        found = (_box_key(env.observation_space), _box_key(env.action_space))
        if None not in expected and found == expected:
            return  # identical boxes (SB3's check compares with allclose, at ~60 us per task)
        try:
            check_for_correct_spaces(env, obs_space, act_space)
        except ValueError as exc:
            raise ValueError(
                f"Task at meta step {spec.meta_step} (info={spec.info}) has spaces that differ from the "
                f"meta policy's: {exc}. Every task of a family must share observation and action spaces."
            ) from exc


def _box_key(space: Any) -> tuple[Any, ...] | None:
    """An exact description of a Box space (``None`` for other spaces)."""
    if type(space) is not spaces.Box:
        return None
    return (space.shape, space.dtype, space.low.tobytes(), space.high.tobytes())


def _torch_save_params(model: Any) -> tuple[list[str], list[str]]:
    """SB3's list of state-dict holders (policy, optimizers) and extra tensors; custom learners may lack it."""
    getter = getattr(model, "_get_torch_save_params", None)
    if getter is None:
        return [], []
    return getter()


def _episode_returns(model: BaseAlgorithm) -> list[float]:
    env = model.get_env()
    if env is not None:
        try:
            per_env = env.env_method("get_episode_rewards")
            return [float(r) for rewards in per_env for r in rewards]
        except (AttributeError, NotImplementedError):
            pass
    return [float(ep["r"]) for ep in (getattr(model, "ep_info_buffer", None) or [])]


_WORKER_INFO: dict[tuple[int, bool], dict[str, Any]] = {}


def _worker_info() -> dict[str, Any]:
    """pid, hostname and Ray node of this process (looked up once per process)."""
    import ray

    key = (os.getpid(), ray.is_initialized())
    if key not in _WORKER_INFO:
        _WORKER_INFO[key] = _lookup_worker_info()
    return dict(_WORKER_INFO[key])


def _lookup_worker_info() -> dict[str, Any]:
    info: dict[str, Any] = {"pid": os.getpid(), "hostname": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            info["node_id"] = ctx.get_node_id()
            info["node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # pragma: no cover - informational only
        pass
    return info
