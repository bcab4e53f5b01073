"""The step record: what one outer step did, built in one place and logged by one small logger.

A :class:`StepRecord` is a typed dataclass that also reads like the mapping it used to be
(``record["ep_return_mean"]``, ``"eval" in record``, ``dict(record)``), so callbacks and scripts
written against the dict keep working; callbacks may add their own keys (``record["eval"] = ...``),
which :meth:`StepRecord.to_dict` includes.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stable_baselines3.common.logger import Logger

    from distributed_reptile.inner.learner import AdaptedResult
    from distributed_reptile.tasks.spec import TaskSpec

_NAN = float("nan")


@dataclass(frozen=True)
class TaskOutcome:
    """What the step record keeps of one task's result (not its weights)."""

    episode_returns: list[float]
    env_steps: int
    timings: dict[str, float]
    worker: dict[str, Any]

    @classmethod
    def of(cls, result: AdaptedResult) -> TaskOutcome:
        return cls(result.episode_returns, result.env_steps, result.timings, result.worker)


@dataclass
class StepRecord(Mapping[str, Any]):
    """One outer step: adaptation returns, env steps, timings, tasks drawn, faults survived."""

    outer_step: int
    meta_lr: float | None = None
    #: Mean / min / max episode return seen while adapting (NaN when no episode ended).
    ep_return_mean: float = _NAN
    ep_return_min: float = _NAN
    ep_return_max: float = _NAN
    episodes: int = 0
    env_steps: int = 0
    #: Seconds spent in the inner ``learn`` calls, summed over tasks.
    inner_seconds: float = 0.0
    #: Seconds the driver waited for results.
    wait_seconds: float = 0.0
    meta_update_seconds: float = 0.0
    sample_seconds: float = 0.0
    step_seconds: float = 0.0
    tasks_per_second: float = _NAN
    update_norm: float = _NAN
    tasks: list[dict[str, Any]] = field(default_factory=list)
    revisits: int = 0
    #: Meta steps of tasks left out (non-finite weights with ``on_nonfinite="skip"``).
    skipped_tasks: list[int] = field(default_factory=list)
    #: Reruns and worker changes during the step (the runner's retry events).
    retries: list[dict[str, Any]] = field(default_factory=list)
    task_pids: list[int | None] = field(default_factory=list)
    tasks_per_node: dict[str, int] = field(default_factory=dict)
    #: Per-task timings (not written to checkpoints).
    task_timings: list[dict[str, float]] = field(default_factory=list)
    #: Keys added by callbacks (e.g. ``"eval"``).
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ mapping view
    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __iter__(self) -> Iterator[str]:
        yield from _FIELDS
        yield from self.extra

    def __len__(self) -> int:
        return len(_FIELDS) + len(self.extra)

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS or key in self.extra

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """The record as a plain dict (``timings=False`` leaves out ``task_timings``)."""
        out = {name: getattr(self, name) for name in _FIELDS}
        if not timings:
            del out["task_timings"]
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        """A record read back from JSON (missing numbers are NaN; unknown keys go to ``extra``)."""
        known = {k: v for k, v in data.items() if k in _FIELDS}
        for name in _FLOATS:
            value = known.get(name, 0.0)
            if isinstance(value, int | float) or (name == "meta_lr" and value is None):
                continue
            known[name] = _NAN  # written as null (or "nan" by older versions)
        extra = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(**known, extra=extra)

    @classmethod
    def build(
        cls,
        outer_step: int,
        meta_lr: float | None,
        specs: Sequence[TaskSpec],
        results: Sequence[TaskOutcome],
        *,
        started: float,
        sampled: float,
        updated: float,
        done: float,
        wait_seconds: float,
        update_norm: float,
        skipped_tasks: list[int],
        retries: list[dict[str, Any]],
    ) -> StepRecord:
        """The record of outer step ``outer_step`` (1-based) from the tasks drawn, the results
        folded in and the ``time.perf_counter()`` stamps of the step's phases."""
        returns = [r for res in results for r in res.episode_returns]
        step_seconds = done - started
        return cls(
            outer_step=outer_step,
            meta_lr=meta_lr,
            ep_return_mean=float(np.mean(returns)) if returns else _NAN,
            ep_return_min=float(np.min(returns)) if returns else _NAN,
            ep_return_max=float(np.max(returns)) if returns else _NAN,
            episodes=len(returns),
            env_steps=int(sum(res.env_steps for res in results)),
            inner_seconds=float(sum(res.timings.get("learn", 0.0) for res in results)),
            wait_seconds=wait_seconds,
            meta_update_seconds=max(done - updated - wait_seconds, 0.0),
            sample_seconds=sampled - started,
            step_seconds=step_seconds,
            tasks_per_second=len(results) / step_seconds if step_seconds > 0 else _NAN,
            update_norm=update_norm,
            tasks=[s.describe() for s in specs],
            revisits=sum(1 for s in specs if s.revisit),
            skipped_tasks=list(skipped_tasks),
            retries=list(retries),
            task_pids=[res.worker.get("pid") for res in results],
            tasks_per_node=dict(
                Counter(
                    res.worker.get("node_id", res.worker.get("hostname", "?")) for res in results
                )
            ),
            task_timings=[res.timings for res in results],
        )


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(StepRecord) if f.name != "extra")
_FLOATS = (
    "meta_lr",
    "ep_return_mean",
    "ep_return_min",
    "ep_return_max",
    "tasks_per_second",
    "update_norm",
)

#: Scalar keys of the step record (those Tune may rank trials on).
SCALAR_KEYS: tuple[str, ...] = (
    "outer_step",
    "meta_lr",
    "ep_return_mean",
    "ep_return_min",
    "ep_return_max",
    "env_steps",
    "step_seconds",
    "tasks_per_second",
    "update_norm",
    "revisits",
)


class StepLogger:
    """Prints a line per outer step (``verbose >= 1``) and writes the figures to TensorBoard.

    :param total_steps: outer steps of the run (for the ``[outer i/N]`` prefix).
    :param verbose: 0 silent, 1 one line per step.
    :param tb_logger: an SB3 logger writing TensorBoard files, or ``None``.
    :param bar: a tqdm progress bar to print through and update, or ``None``.
    :param budget: ``(updates_per_rollout, total_updates, task_batch_size)`` when known.
    :param env_steps_per_step: env steps of one outer step's inner loops.
    """

    def __init__(
        self,
        total_steps: int,
        verbose: int = 0,
        tb_logger: Logger | None = None,
        bar: Any = None,
        budget: tuple[int, int, int] | None = None,
        env_steps_per_step: int = 0,
    ) -> None:
        self.total_steps = total_steps
        self.verbose = verbose
        self.tb = tb_logger
        self.bar = bar
        self.budget = budget
        self.env_steps_per_step = env_steps_per_step

    @classmethod
    def for_run(cls, trainer: Any, run_stem: str, progress_bar: bool = False) -> StepLogger:
        """The logger of a trainer's ``learn`` call: TensorBoard files in
        ``<tensorboard_logs>/<run_stem>`` when the trainer has ``tensorboard_logs``, and a tqdm
        bar over the outer steps left with ``progress_bar``."""
        tb = None
        if trainer.tensorboard_logs is not None:
            from stable_baselines3.common.logger import configure

            tb = configure(os.path.join(trainer.tensorboard_logs, run_stem), ["tensorboard"])
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=trainer.outer_steps, initial=trainer.num_outer_steps, unit="outer step"
            )
        budget = trainer.update_budget
        known = budget.total_updates is not None and budget.updates_per_rollout is not None
        return cls(
            trainer.outer_steps,
            verbose=trainer.verbose,
            tb_logger=tb,
            bar=bar,
            budget=(budget.updates_per_rollout, budget.total_updates, trainer.task_batch_size)
            if known
            else None,
            env_steps_per_step=trainer.inner_steps * trainer.task_batch_size,
        )

    def print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line)

    def log(self, record: StepRecord) -> None:
        if self.verbose >= 1:
            self.print(
                f"[outer {record.outer_step}/{self.total_steps}] return {record.ep_return_mean:.2f} "
                f"(min {record.ep_return_min:.2f}, max {record.ep_return_max:.2f}), "
                f"{record.env_steps} env steps, {record.step_seconds:.2f}s "
                f"(waited {record.wait_seconds:.2f}s, meta-update "
                f"{record.meta_update_seconds * 1e3:.1f}ms)"
            )
        if self.bar is not None:
            self.bar.set_postfix(
                tasks_per_s=f"{record.tasks_per_second:.2f}",
                ep_return=f"{record.ep_return_mean:.2f}",
            )
            self.bar.update(1)
        if self.tb is not None:
            self._to_tensorboard(record)

    def _to_tensorboard(self, record: StepRecord) -> None:
        log = self.tb
        assert log is not None
        step = record.outer_step
        log.record("meta/outer_step", step)
        log.record("meta/meta_lr", record.meta_lr)
        log.record("meta/update_norm", record.update_norm)
        log.record("meta/revisits", record.revisits)
        log.record("meta/total_env_steps_seen", step * self.env_steps_per_step)
        for key in ("ep_return_mean", "ep_return_min", "ep_return_max"):
            value = record[key]
            if not math.isnan(value):
                log.record(f"adaptation/{key}", value)
        log.record("adaptation/env_steps", record.env_steps)
        log.record("time/inner_seconds", record.inner_seconds)
        log.record("time/wait_seconds", record.wait_seconds)
        log.record("time/meta_update_seconds", record.meta_update_seconds)
        log.record("time/outer_step_seconds", record.step_seconds)
        log.record("time/tasks_per_second", record.tasks_per_second)
        if self.budget is not None:
            per_rollout, total, batch = self.budget
            log.record("budget/updates_per_rollout_per_task", per_rollout)
            log.record("budget/updates_per_task", total)
            log.record("budget/updates_per_outer_step", total * batch)
        log.dump(step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


__all__ = ["SCALAR_KEYS", "StepLogger", "StepRecord", "TaskOutcome"]
