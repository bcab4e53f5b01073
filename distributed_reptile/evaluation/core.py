"""Meta-test evaluation: held-out returns before and after adaptation, from several initialisations.

For each held-out task (a family's ``"test"`` split) and each adaptation budget, an
initialisation's weights are adapted with the inner learner (the same code, and on a trainer the
same workers, as meta-training: :meth:`~distributed_reptile.inner.InnerLearner.run` with a
per-job budget) and then run for a few episodes on a fresh env of the task. Every initialisation
sees the same tasks, adaptation seeds and evaluation seeds, so differences can be taken task by
task (paired). Budgets are env steps; for on-policy learners they are usually given as a number
of inner rollouts (``k * n_steps * n_envs`` env steps).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distributed_reptile.evaluation.stats import budget_axis, summarize
from distributed_reptile.inner.learner import InnerLearner, TaskJob
from distributed_reptile.runners.base import Runner
from distributed_reptile.sb3_models import build_sb3_model
from distributed_reptile.seeding import derive_seed
from distributed_reptile.tasks.generator import accepts_named_arg
from distributed_reptile.tasks.spec import TaskCallable, TaskSpec, check_task_pair
from distributed_reptile.weights import NumpyWeights, module_to_numpy

#: Adaptation budgets, in inner rollouts, when none are given.
DEFAULT_BUDGET_ROLLOUTS: tuple[int, ...] = (0, 1, 2, 4)
_EVAL_STREAM = 0xE7A1


@dataclass(frozen=True)
class Budgets:
    """Adaptation budgets: env steps, and the same in inner rollouts where that unit exists.

    :param env_steps: env steps of adaptation, one per budget (0: evaluate without adapting).
    :param rollouts: the same budgets in rollouts (on-policy learners), else ``None``.
    :param rollout_steps: env steps of one rollout (``n_steps * n_envs``), else ``None``.
    """

    env_steps: tuple[int, ...]
    rollouts: tuple[int, ...] | None = None
    rollout_steps: int | None = None

    def label(self, i: int) -> str:
        """Name of budget ``i`` in logs: ``budget_{k}`` (k rollouts) or ``steps_{n}``."""
        if self.rollouts is not None:
            return f"budget_{self.rollouts[i]}"
        return f"steps_{self.env_steps[i]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "env_steps": list(self.env_steps),
            "rollouts": None if self.rollouts is None else list(self.rollouts),
            "rollout_steps": self.rollout_steps,
        }


def rollout_size(model: Any) -> int | None:
    """Env steps of one inner rollout of ``model`` (``n_steps * n_envs``), ``None`` without one."""
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    if isinstance(model, OnPolicyAlgorithm):
        return int(model.n_steps) * int(getattr(model, "n_envs", 1))
    return None


def resolve_budgets(
    model: Any,
    rollouts: Sequence[int] | None = None,
    env_steps: Sequence[int] | None = None,
) -> Budgets:
    """Budgets from rollout counts (on-policy ``model``) or explicit env steps.

    :param model: a model built like the inner learner's (its rollout size is read from it).
    :param rollouts: budgets in inner rollouts (default 0, 1, 2, 4 when ``env_steps`` is not given).
    :param env_steps: budgets in env steps (needed for off-policy and custom learners).
    """
    if rollouts is not None and env_steps is not None:
        raise ValueError("Give adaptation budgets either in rollouts or in env steps, not both.")
    size = rollout_size(model)
    if env_steps is not None:
        steps = tuple(_non_negative_ints("budget env steps", env_steps))
        in_rollouts = None
        if size is not None and all(s % size == 0 for s in steps):
            in_rollouts = tuple(s // size for s in steps)
        return Budgets(steps, in_rollouts, size)
    if size is None:
        raise ValueError(
            f"{type(model).__name__} has no rollout size (n_steps): give the adaptation budgets in "
            "env steps (budget_steps=[0, 1000, ...] / --budget-unit steps)."
        )
    counts = tuple(_non_negative_ints("budget rollouts", rollouts or DEFAULT_BUDGET_ROLLOUTS))
    return Budgets(tuple(k * size for k in counts), counts, size)


def _non_negative_ints(name: str, values: Sequence[int]) -> list[int]:
    out = [int(v) for v in values]
    if not out or any(v < 0 for v in out) or any(v != w for v, w in zip(out, values, strict=True)):
        raise ValueError(f"{name} must be a non-empty list of integers >= 0, got {list(values)!r}.")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a budget, got {out!r}.")
    return sorted(out)


# ---------------------------------------------------------------------------- tasks
def resolve_task_callable(family: str | TaskCallable) -> tuple[str, TaskCallable]:
    """``(name, make_task)`` of a built-in family name or a task callable."""
    from distributed_reptile.tasks.families import FAMILIES

    if isinstance(family, str):
        if family not in FAMILIES:
            raise ValueError(f"Unknown task family {family!r}: use one of {', '.join(FAMILIES)}.")
        return family, FAMILIES[family]
    if not callable(family):
        raise TypeError(f"family must be a family name or a task callable, got {family!r}.")
    for name, make in FAMILIES.items():
        if make is family:
            return name, make
    return getattr(family, "__name__", repr(family)), family


def held_out_specs(
    family: str | TaskCallable,
    n_tasks: int,
    seed: int = 0,
    task_params: Mapping[str, Any] | None = None,
    split: str = "test",
) -> list[TaskSpec]:
    """Specs of ``n_tasks`` held-out tasks: seeds ``seed .. seed + n_tasks - 1`` of ``split``.

    These are the tasks of :func:`~distributed_reptile.tasks.families.held_out_tasks`, as specs
    that workers build themselves.

    :param family: a built-in family name or a task callable accepting ``split=``.
    :param n_tasks: number of tasks.
    :param seed: first task seed.
    :param task_params: extra keyword arguments of the task callable (``split`` is set here).
    :param split: the split to draw from (``"test"``: held out from meta-training).
    """
    from distributed_reptile.tasks.families import held_out_seeds

    if int(n_tasks) < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}.")
    _, make = resolve_task_callable(family)
    params = dict(task_params or {})
    params.pop("split", None)
    if accepts_named_arg(make, "split"):
        params["split"] = split
    elif split != "train":
        raise ValueError(
            f"Task callable {getattr(make, '__name__', make)!r} has no `split` argument, so it cannot "
            'draw held-out tasks: add `split="train"` to its signature (see the built-in families).'
        )
    specs = []
    for i, task_seed_ in enumerate(held_out_seeds(int(n_tasks), seed)):
        env, info = check_task_pair(make(random_seed=task_seed_, **params), where="task callable")
        env.close()
        specs.append(
            TaskSpec(
                meta_step=i,
                info=info,
                random_seed=task_seed_,
                task_callable=make,
                task_callable_params=dict(params),
            )
        )
    return specs


# ---------------------------------------------------------------------------- inits and runners
def random_init_weights(
    rl_algorithm: type,
    rl_algo_kwargs: Mapping[str, Any],
    env: Any,
    seed: int,
    device: str = "cpu",
) -> NumpyWeights:
    """The policy weights of a freshly built model (same construction as the meta model).

    :param rl_algorithm: the learner class.
    :param rl_algo_kwargs: its keyword arguments (``policy`` included).
    :param env: an env of the family (only its spaces matter).
    :param seed: seed of the initial weights.
    :param device: torch device of the temporary model.
    """
    model = build_sb3_model(rl_algorithm, rl_algo_kwargs, env, seed=seed, device=device)
    return module_to_numpy(model.policy)


def build_eval_runner(
    rl_algorithm: type,
    rl_algo_kwargs: Mapping[str, Any],
    backend: str = "serial",
    num_workers: int = 1,
    worker_resources: Mapping[str, Any] | None = None,
) -> Runner:
    """A standalone runner of evaluation jobs (for weights that do not come with a live trainer).

    ``backend`` names an execution backend (:mod:`distributed_reptile.execution`); a Ray backend
    joins the Ray instance already initialised (see :func:`distributed_reptile.ray_utils.ensure_ray`).
    Close the runner when done.
    """
    params = dict(rl_algo_kwargs)
    params.setdefault("device", "cpu")
    factory = functools.partial(
        InnerLearner,
        rl_algorithm=rl_algorithm,
        rl_algo_kwargs=params,
        inner_steps=1,
        torch_threads=1,
    )
    from distributed_reptile.execution import open_backend
    from distributed_reptile.settings import ExecutionSettings

    execution = open_backend(
        backend,
        ExecutionSettings(num_workers=num_workers, worker_resources=dict(worker_resources or {})),
    )
    return execution.make_runner(factory)


# ---------------------------------------------------------------------------- running
def adaptation_returns(
    runner: Runner,
    weights: NumpyWeights,
    specs: Sequence[TaskSpec],
    budgets: Budgets,
    episodes: int = 10,
    deterministic: bool = True,
    seed: int = 0,
    metrics_out: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[list[list[float]]]]:
    """Adapt ``weights`` to every task with every budget, then evaluate.

    Task ``t`` uses the seed ``derive_seed(seed, t)`` for adaptation and evaluation alike, whatever
    the initialisation and the budget, so that returns can be compared task by task.

    :param metrics_out: filled with the episode metrics the tasks' envs declare (Meta-World's
        ``success``...): name -> mean over the episodes per ``(task, budget)``.

    :return: the mean episode return per ``(task, budget)``, shape ``(n_tasks, n_budgets)``, and
        the episode returns themselves (``[task][budget][episode]``).
    """
    if int(episodes) < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}.")
    n_b = len(budgets.env_steps)
    # One job per task: the budgets are points along one adaptation run where the learner allows
    # it (the same returns as separate runs), else separate runs inside the job.
    jobs = [
        TaskJob(
            spec=spec,
            task_seed=derive_seed(seed, _EVAL_STREAM, t),
            index=t,
            eval_episodes=int(episodes),
            eval_deterministic=deterministic,
            return_weights=False,
            eval_budgets=tuple(int(s) for s in budgets.env_steps),
        )
        for t, spec in enumerate(specs)
    ]
    means = np.full((len(specs), n_b), np.nan)
    raw: list[list[list[float]]] = [[[] for _ in range(n_b)] for _ in specs]
    for result in runner.run_batch(jobs, weights):
        for b, returns in enumerate(result.eval_returns_by_budget):
            raw[result.index][b] = list(returns)
            means[result.index, b] = float(np.mean(returns))
        if metrics_out is not None:
            for b, metrics in enumerate(result.eval_metrics_by_budget):
                for name, values in metrics.items():
                    table = metrics_out.setdefault(name, np.full((len(specs), n_b), np.nan))
                    table[result.index, b] = float(np.mean(values)) if values else np.nan
    return means, raw


#: Report fields of a metric an env reports without declaring it (no :class:`Metric`).
_UNDECLARED: dict[str, Any] = {"higher_is_better": None, "reduce": None, "description": ""}


def declared_metrics(specs: Sequence[TaskSpec]) -> dict[str, dict[str, Any]]:
    """The report fields (direction, reduction, description) of the episode metrics the tasks'
    envs declare (:mod:`distributed_reptile.tasks.episode_metrics`), read from the first task's env.
    """
    from distributed_reptile.tasks.episode_metrics import metrics_of

    if not specs:
        return {}
    spec = specs[0]
    env = spec.build_env()
    try:
        return {name: metric.describe() for name, metric in metrics_of(env).items()}
    finally:
        if spec.env is None:
            env.close()


def evaluate_inits(
    runner: Runner | Mapping[str, Runner],
    inits: Mapping[str, Sequence[NumpyWeights]],
    specs: Sequence[TaskSpec],
    budgets: Budgets,
    episodes: int = 10,
    deterministic: bool = True,
    seed: int = 0,
    reference: str = "meta",
    confidence: float = 0.95,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every initialisation on the same tasks and budgets; return the report.

    :param runner: runs the jobs (a trainer's ``runner``: the same workers as training, or
        :func:`build_eval_runner`), or one runner per initialisation (e.g. each adapting with the
        step :func:`~distributed_reptile.evaluation.select_adaptation_lr` chose for it).
    :param inits: name -> one weights dict per training seed (e.g. ``{"meta": [w0, w1, w2],
        "random": [r0, r1, r2], "multitask": [m0, m1, m2]}``).
    :param specs: the held-out tasks (:func:`held_out_specs`).
    :param budgets: adaptation budgets (:func:`resolve_budgets`).
    :param episodes: evaluation episodes per task and budget.
    :param deterministic: deterministic actions in evaluation episodes.
    :param seed: evaluation seed (adaptation and evaluation seeds of the tasks derive from it).
    :param reference: the initialisation the others are compared with, task by task.
    :param confidence: coverage of the intervals.
    :param metadata: extra fields copied into the report (family, checkpoints, ...).
    :return: the report of :func:`summarize`, with the episode returns, timings and settings;
        ``report["metrics"][name]`` is the same summary for each episode metric the tasks' envs
        declare (empty without any), with the metric's ``higher_is_better``, ``reduce`` and
        ``description``.
    """
    if reference not in inits:
        raise ValueError(
            f"The reference initialisation {reference!r} is not among {sorted(inits)}."
        )
    if isinstance(runner, Mapping):
        missing = sorted(set(inits) - set(runner))
        if missing:
            raise ValueError(f"No runner for the initialisation(s) {missing}: give one per init.")
    per_unit: dict[str, np.ndarray] = {}
    metric_rows: dict[str, dict[str, list[np.ndarray]]] = {}
    episodes_raw: dict[str, list[Any]] = {}
    seconds: dict[str, float] = {}
    for name, weight_list in inits.items():
        if not weight_list:
            raise ValueError(f"Initialisation {name!r} has no weights.")
        t0 = time.perf_counter()
        rows, raws = [], []
        for weights in weight_list:
            found: dict[str, np.ndarray] = {}
            means, raw = adaptation_returns(
                runner[name] if isinstance(runner, Mapping) else runner,
                weights,
                specs,
                budgets,
                episodes,
                deterministic,
                seed,
                found,
            )
            rows.append(means)
            raws.append(raw)
            for metric, table in found.items():
                metric_rows.setdefault(metric, {}).setdefault(name, []).append(table)
        per_unit[name] = np.stack(rows)
        episodes_raw[name] = raws
        seconds[name] = time.perf_counter() - t0
    report = summarize(per_unit, budgets, reference=reference, confidence=confidence)
    # The metrics the tasks' envs declare (success rate, velocity error): the same summary as the
    # return, per metric, for the inits that reported it on every task, with the metric's
    # direction and description (read from an env on the driver; no task's draws change).
    declared = declared_metrics(specs) if metric_rows else {}
    report["metrics"] = {
        metric: {
            **declared.get(metric, _UNDECLARED),
            **summarize(
                {name: np.stack(tables) for name, tables in by_init.items()},
                budgets,
                reference=reference,
                confidence=confidence,
            ),
        }
        for metric, by_init in metric_rows.items()
        if reference in by_init and len(by_init) == len(inits)
    }
    report["settings"] = {
        "episodes": int(episodes),
        "deterministic": bool(deterministic),
        "eval_seed": int(seed),
        "n_tasks": len(specs),
        "task_seeds": [s.random_seed for s in specs],
        "tasks": [s.describe()["info"] for s in specs],
    }
    report["episode_returns"] = episodes_raw
    report["timing_seconds"] = seconds
    report["metadata"] = dict(metadata or {})
    return report


__all__ = [
    "DEFAULT_BUDGET_ROLLOUTS",
    "Budgets",
    "adaptation_returns",
    "budget_axis",
    "build_eval_runner",
    "declared_metrics",
    "evaluate_inits",
    "held_out_specs",
    "random_init_weights",
    "resolve_budgets",
    "resolve_task_callable",
    "rollout_size",
    "summarize",
]
