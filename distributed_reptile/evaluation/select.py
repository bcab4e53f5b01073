"""The adaptation step of each initialisation, chosen on meta-train tasks.

The inner loop's learning rate suits meta-training (large steps that move every task's weights
far from the meta-init), not necessarily adaptation from a good starting point: a meta-init that
already acts well can lose return with the same step, while a random init needs it. Comparing the
initialisations fairly means giving each the step that suits it, chosen without looking at the
held-out tasks: :func:`select_adaptation_lr` adapts every initialisation with every candidate step
on a few tasks of the *training* split, and keeps, per initialisation, the step with the highest
mean return after adaptation (over the positive budgets, the tasks and the training seeds). The
held-out evaluation then runs each initialisation with its own step
(:func:`~distributed_reptile.evaluation.evaluate_inits` with one runner per initialisation).
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from distributed_reptile.evaluation.core import Budgets, adaptation_returns
from distributed_reptile.runners.base import Runner
from distributed_reptile.tasks.spec import TaskSpec
from distributed_reptile.weights import NumpyWeights


def _positive_budgets(budgets: Budgets) -> Budgets:
    keep = [i for i, steps in enumerate(budgets.env_steps) if steps > 0]
    if not keep:
        raise ValueError(
            f"Choosing an adaptation step needs a budget above 0, got {list(budgets.env_steps)}."
        )
    rollouts = None if budgets.rollouts is None else tuple(budgets.rollouts[i] for i in keep)
    return Budgets(tuple(budgets.env_steps[i] for i in keep), rollouts, budgets.rollout_steps)


def _overlaps(specs: Sequence[TaskSpec], held_out: Sequence[TaskSpec]) -> int:
    """How many of ``specs`` describe the same task as one of ``held_out`` (the same ``info``
    but for the name of the split)."""

    def key(spec: TaskSpec) -> str:
        info = {k: v for k, v in spec.describe()["info"].items() if k != "split"}
        return json.dumps(info, sort_keys=True, default=repr)

    seen = {key(s) for s in held_out}
    return sum(key(s) in seen for s in specs)


def _finite(score: float) -> float:
    """A non-finite mean return (a diverged adaptation) ranks last."""
    return score if math.isfinite(score) else -math.inf


def _check_candidates(candidates: Sequence[float]) -> list[float]:
    out = [float(c) for c in candidates]
    if not out or any(not math.isfinite(c) or c <= 0 for c in out):
        raise ValueError(
            f"Candidate adaptation learning rates must be a non-empty list of finite numbers > 0, "
            f"got {list(candidates)!r}."
        )
    if len(set(out)) != len(out):
        raise ValueError(f"Candidate adaptation learning rates repeat a value: {out!r}.")
    return out


def select_adaptation_lr(
    make_runner: Callable[[float], Runner],
    inits: Mapping[str, Sequence[NumpyWeights]],
    specs: Sequence[TaskSpec],
    budgets: Budgets,
    candidates: Sequence[float],
    episodes: int = 2,
    deterministic: bool = True,
    seed: int = 1,
    held_out: Sequence[TaskSpec] = (),
) -> dict[str, Any]:
    """Choose, per initialisation, the adaptation learning rate with the best mean return.

    :param make_runner: a runner whose learner adapts with learning rate ``lr`` (e.g.
        :func:`~distributed_reptile.evaluation.build_eval_runner` with ``learning_rate=lr``); each
        is closed before the next opens.
    :param inits: name -> one weights dict per training seed, as for ``evaluate_inits``.
    :param specs: the tasks to choose on: the family's *training* split
        (``held_out_specs(family, n, split="train")``), never the held-out tasks.
    :param budgets: the adaptation budgets of the evaluation; those above 0 are scored.
    :param candidates: the learning rates to try, in order (a tie keeps the first).
    :param episodes: evaluation episodes per task and budget.
    :param seed: seed of the adaptation and evaluation draws (use another than the held-out
        evaluation's).
    :param held_out: the held-out tasks the evaluation will use: a task chosen on that equals one
        of them (same ``info``: a family whose splits overlap, like HalfCheetah direction) is
        counted in ``"overlaps_held_out"`` and warned about.
    :return: ``{"chosen": {init: lr}, "scores": {init: {lr: mean return}}, "candidates",
        "task_seeds", "split", "budgets", "episodes", "seconds", "criterion"}``.
    """
    lrs = _check_candidates(candidates)
    if not specs:
        raise ValueError("Choosing an adaptation step needs at least one task.")
    scored = _positive_budgets(budgets)
    overlaps = _overlaps(specs, held_out)
    if overlaps:
        warnings.warn(
            f"{overlaps} of the {len(specs)} tasks the adaptation step is chosen on equal held-out "
            "tasks (this family's splits overlap): the choice has seen the held-out tasks.",
            stacklevel=2,
        )
    scores: dict[str, dict[float, float]] = {name: {} for name in inits}
    t0 = time.perf_counter()
    for lr in lrs:
        runner = make_runner(lr)
        try:
            for name, weight_list in inits.items():
                means = [
                    adaptation_returns(runner, w, specs, scored, episodes, deterministic, seed)[0]
                    for w in weight_list
                ]
                scores[name][lr] = float(np.mean(means))
        finally:
            runner.close()
    chosen = {
        name: max(lrs, key=lambda lr, s=by_lr: (_finite(s[lr]), -lrs.index(lr)))
        for name, by_lr in scores.items()
    }
    return {
        "chosen": chosen,
        "scores": {
            name: {repr(lr): v for lr, v in by_lr.items()} for name, by_lr in scores.items()
        },
        "candidates": lrs,
        "task_seeds": [s.random_seed for s in specs],
        "split": [s.task_callable_params.get("split") for s in specs][0],
        "budgets": scored.as_dict(),
        "episodes": int(episodes),
        "overlaps_held_out": overlaps,
        "seconds": time.perf_counter() - t0,
        "criterion": "mean return over the budgets above 0, the tasks and the training seeds",
    }


class RunnersByStep(Mapping[str, Runner]):
    """One runner per initialisation, each adapting with the step chosen for it
    (``select_adaptation_lr(...)["chosen"]``), for ``evaluate_inits``.

    A step's runner opens when an initialisation first asks for it and closes when one with
    another step does, so only one runner's workers are alive at a time (``evaluate_inits`` goes
    through the initialisations in order): no more workers than the machine was sized for.
    Close it when done (or use it as a context manager).
    """

    def __init__(self, make_runner: Callable[[float], Runner], chosen: Mapping[str, float]):
        self._make = make_runner
        self._chosen = dict(chosen)
        self._lr: float | None = None
        self._runner: Runner | None = None

    def __getitem__(self, name: str) -> Runner:
        lr = self._chosen[name]
        if self._runner is None or lr != self._lr:
            self.close()
            self._runner, self._lr = self._make(lr), lr
        return self._runner

    def __iter__(self) -> Iterator[str]:
        return iter(self._chosen)

    def __len__(self) -> int:
        return len(self._chosen)

    def close(self) -> None:
        if self._runner is not None:
            runner, self._runner, self._lr = self._runner, None, None
            runner.close()

    def __enter__(self) -> RunnersByStep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def adaptation_runner(trainer: Any, **rl_algo_overrides: Any) -> Runner:
    """A new runner of ``trainer``'s own inner loop (same learner, same execution backend), its
    learner built with ``rl_algo_overrides`` over ``rl_algo_kwargs`` (e.g. ``learning_rate=0.01``).
    Its workers are new ones: close it when done."""
    factory = trainer._learner_factory()
    params = {**factory.keywords["rl_algo_kwargs"], **rl_algo_overrides}
    return trainer.execution.make_runner(functools.partial(factory, rl_algo_kwargs=params))


__all__ = ["RunnersByStep", "adaptation_runner", "select_adaptation_lr"]
