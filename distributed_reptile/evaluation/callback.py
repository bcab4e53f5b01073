"""MetaEvalCallback: the meta-test evaluation every few outer steps, during meta-training."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.evaluation.core import (
    Budgets,
    adaptation_returns,
    held_out_specs,
    random_init_weights,
    resolve_budgets,
    summarize,
)
from distributed_reptile.evaluation.report import json_ready
from distributed_reptile.tasks.spec import TaskCallable, TaskSpec
from distributed_reptile.weights import NumpyWeights, module_to_numpy

if TYPE_CHECKING:
    from distributed_reptile.records import StepRecord


class MetaEvalCallback(MetaCallback):
    """Evaluate the meta-init on held-out tasks every ``eval_freq`` outer steps.

    The jobs run through the trainer's own runner (the training workers). Each evaluation adds
    ``record["eval"]`` to the step record (mean return per budget of the meta-init and of each
    comparison init, and the paired difference meta minus each), writes ``eval/meta_return_<budget>``,
    ``eval/<name>_return_<budget>`` and ``eval/meta_minus_<name>_<budget>`` to TensorBoard when the
    trainer logs there (``tensorboard_logs=``), and keeps the full report in :attr:`reports`.
    Where the family declares episode metrics (Meta-World's ``success``, HalfCheetah's
    ``velocity_error``), the meta-init's mean per budget is added as
    ``record["eval"]["metrics"][<metric>]`` and ``eval/meta_<metric>_<budget>``.
    Budget names are ``budget_<k>`` (k inner rollouts) or ``steps_<n>``. The comparison inits
    (a random init, and ``baselines``) are evaluated once, at the first evaluation: with the same
    weights, tasks and seeds their returns would not change.

    :param eval_freq: outer steps between evaluations.
    :param family: built-in family name or task callable of the held-out tasks (default: the
        trainer's ``task_callable``, drawn from its ``"test"`` split).
    :param n_tasks: held-out tasks per evaluation.
    :param budgets: adaptation budgets in inner rollouts (default 0, 1, 2, 4).
    :param budget_steps: adaptation budgets in env steps instead (off-policy and custom learners).
    :param episodes: evaluation episodes per task and budget.
    :param deterministic: deterministic actions in evaluation episodes.
    :param task_params: extra keyword arguments of the task callable (default: the trainer's).
    :param eval_seed: seed of the held-out tasks' adaptation and evaluation.
    :param task_seed: first seed of the held-out tasks.
    :param compare_random: also evaluate a freshly built model (seeded with ``random_seed``).
    :param random_seed: seed of that random init.
    :param baselines: other inits to compare with, name -> policy weights (e.g. a multi-task policy).
    :param log_path: JSON file rewritten after each evaluation with every report so far.
    :param verbose: 1 prints a line per evaluation.
    """

    def __init__(
        self,
        eval_freq: int,
        family: str | TaskCallable | None = None,
        n_tasks: int = 10,
        budgets: Sequence[int] | None = None,
        budget_steps: Sequence[int] | None = None,
        episodes: int = 5,
        deterministic: bool = True,
        task_params: Mapping[str, Any] | None = None,
        eval_seed: int = 0,
        task_seed: int = 0,
        compare_random: bool = True,
        random_seed: int = 0,
        baselines: Mapping[str, NumpyWeights] | None = None,
        log_path: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if isinstance(eval_freq, bool) or not isinstance(eval_freq, int) or eval_freq <= 0:
            raise ValueError(
                f"eval_freq must be a positive number of outer steps, got {eval_freq!r}."
            )
        self.eval_freq = eval_freq
        self.family = family
        self.n_tasks = int(n_tasks)
        self.budget_rollouts = budgets
        self.budget_steps = budget_steps
        self.episodes = int(episodes)
        self.deterministic = deterministic
        self.task_params = task_params
        self.eval_seed = int(eval_seed)
        self.task_seed = int(task_seed)
        self.compare_random = compare_random
        self.random_seed = int(random_seed)
        self.baselines = dict(baselines or {})
        self.log_path = log_path
        self.specs: list[TaskSpec] = []
        self.budgets: Budgets | None = None
        self.reports: list[dict[str, Any]] = []
        self._comparison: dict[str, np.ndarray] | None = None

    def _init_callback(self) -> None:
        trainer = self.trainer
        assert trainer is not None
        gen_params = trainer.tasks_generator_params
        family = self.family if self.family is not None else gen_params.get("task_callable")
        if family is None:
            raise ValueError(
                "MetaEvalCallback needs the held-out tasks: pass family= (a built-in family name or a "
                "task callable with a `split` argument); the trainer's generator has no task_callable."
            )
        params = (
            self.task_params
            if self.task_params is not None
            else gen_params.get("task_callable_params")
        )
        self.specs = held_out_specs(family, self.n_tasks, seed=self.task_seed, task_params=params)
        self.budgets = resolve_budgets(trainer.meta_algo, self.budget_rollouts, self.budget_steps)
        self._comparison = None

    def _comparison_returns(self) -> dict[str, np.ndarray]:
        """Returns of the comparison inits (computed once)."""
        if self._comparison is None:
            trainer = self.trainer
            assert trainer is not None and self.budgets is not None
            inits = dict(self.baselines)
            if self.compare_random:
                env = self.specs[0].build_env()
                try:
                    inits = {
                        "random": random_init_weights(
                            trainer.rl_algorithm, trainer.rl_algo_kwargs, env, self.random_seed
                        ),
                        **inits,
                    }
                finally:
                    env.close()
            self._comparison = {
                name: adaptation_returns(
                    trainer.runner,
                    weights,
                    self.specs,
                    self.budgets,
                    self.episodes,
                    self.deterministic,
                    self.eval_seed,
                )[0][None]
                for name, weights in inits.items()
            }
        return self._comparison

    def evaluate_now(self) -> dict[str, Any]:
        """Evaluate the current meta weights (and the comparison inits) and return the report."""
        trainer = self.trainer
        assert trainer is not None and self.budgets is not None
        t0 = time.perf_counter()
        comparison = self._comparison_returns()
        found: dict[str, np.ndarray] = {}
        meta, _ = adaptation_returns(
            trainer.runner,
            module_to_numpy(trainer.meta_policy),
            self.specs,
            self.budgets,
            self.episodes,
            self.deterministic,
            self.eval_seed,
            found,
        )
        report = summarize({"meta": meta[None], **comparison}, self.budgets, reference="meta")
        # the meta-init's episode metrics (success rate, velocity error), where the family has any
        report["metrics"] = {
            name: summarize({"meta": table[None]}, self.budgets, reference="meta")
            for name, table in found.items()
        }
        report["outer_step"] = trainer.num_outer_steps
        report["seconds"] = time.perf_counter() - t0
        return report

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        trainer = self.trainer
        assert trainer is not None and self.budgets is not None
        if trainer.num_outer_steps % self.eval_freq != 0:
            return True
        report = self.evaluate_now()
        self.reports.append(report)
        labels = [self.budgets.label(b) for b in range(len(self.budgets.env_steps))]
        summary: dict[str, Any] = {"budgets": labels, "seconds": report["seconds"]}
        for name, init in report["inits"].items():
            summary[name] = [row["mean"] for row in init["budgets"]]
        for name, rows in report["paired"].items():
            summary[name] = [row["mean"] for row in rows]
        if report["metrics"]:
            summary["metrics"] = {
                metric: [row["mean"] for row in part["inits"]["meta"]["budgets"]]
                for metric, part in report["metrics"].items()
            }
        record["eval"] = summary
        logger = trainer.meta_logger
        if logger is not None:
            for name, init in report["inits"].items():
                for label, row in zip(labels, init["budgets"], strict=True):
                    logger.record(f"eval/{name}_return_{label}", row["mean"])
            for metric, means in summary.get("metrics", {}).items():
                for label, mean in zip(labels, means, strict=True):
                    logger.record(f"eval/meta_{metric}_{label}", mean)
            for pair, rows in report["paired"].items():
                other = pair.split(" - ", 1)[1]
                for label, row in zip(labels, rows, strict=True):
                    logger.record(f"eval/meta_minus_{other}_{label}", row["mean"])
            logger.record("eval/seconds", report["seconds"])
            logger.dump(step=trainer.num_outer_steps)
        if self.log_path is not None:
            path = Path(self.log_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(json_ready(self.reports), indent=1), encoding="utf-8")
        if self.verbose >= 1:
            meta = ", ".join(
                f"{lab} {v:.2f}" for lab, v in zip(labels, summary["meta"], strict=True)
            )
            print(
                f"[eval at outer step {trainer.num_outer_steps}] meta-init: {meta} ({report['seconds']:.1f}s)"
            )
        return True


__all__ = ["MetaEvalCallback"]
