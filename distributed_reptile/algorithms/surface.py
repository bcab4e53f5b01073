"""The SB3-like surface of a trainer: ``predict``, ``get_env``, ``set_random_seed``, ``policy``,
and saving and loading (the files themselves are :mod:`distributed_reptile.checkpoint`'s)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from distributed_reptile import checkpoint as ckpt
from distributed_reptile.imports import import_path_of
from distributed_reptile.records import StepLogger
from distributed_reptile.step_history import RecentRecords, StepHistory, StepTotals

SelfSurface = TypeVar("SelfSurface", bound="SB3Surface")


class SB3Surface:
    """Mixed into :class:`~distributed_reptile.BaseMetaAlgorithm`, which sets the attributes read
    here (``meta_algo``, ``meta_policy``, ``seed``, the schedule position...)."""

    meta_algo: Any
    meta_policy: Any
    meta_optimizer: Any
    seed: int
    verbose: int
    num_outer_steps: int
    outer_steps: int
    current_meta_lr: float | None
    _last_optimizer_meta_lr: float | None
    _task_seed_mode: str
    _logger: StepLogger | None
    _step_history: StepHistory | None = None

    @property
    def step_history(self) -> StepHistory:
        """Where the step records go: the newest in memory, running totals, the step-records file
        (see :mod:`distributed_reptile.step_history`)."""
        if self._step_history is None:
            self._step_history = StepHistory()
        return self._step_history

    @property
    def step_records(self) -> RecentRecords:
        """The newest step records, oldest first (``learn(keep_records=...)``, 1000 by default):
        ``step_records[-1]`` is the last outer step's. The whole run's are in the step-records
        file (``learn(step_records_path=...)``), its totals in :attr:`step_totals`."""
        return self.step_history.recent

    @property
    def step_totals(self) -> StepTotals:
        """Running totals of the whole run's step records (outer steps, env steps, tasks,
        seconds, tasks per node of each session), kept by checkpoints."""
        return self.step_history.totals

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

    @property
    def meta_logger(self) -> Any:
        """The SB3 logger writing this ``learn`` call's TensorBoard files (``None`` outside
        ``learn`` or without ``tensorboard_logs``); callbacks may record figures through it."""
        return self._logger.tb if self._logger is not None else None

    # ------------------------------------------------------------------ checkpoints
    def save_meta_algo(self, path: str | os.PathLike[str]) -> None:
        """Save the meta model with SB3's own ``.save()`` (load it with e.g. ``PPO.load``)."""
        self.meta_algo.save(Path(path))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a complete, resumable checkpoint folder at ``path`` (atomically), after the
        step-records file has every step up to this one.

        :raises ~distributed_reptile.checkpoint.DiskFullError: the disk filled while writing;
            earlier checkpoints are intact.
        """
        self.step_history.flush()
        return ckpt.write_checkpoint(
            path, functools.partial(ckpt.write_trainer_files, trainer=self)
        )

    def save_checkpoint(
        self, folder: str, prefix: str = "meta_ckpt", keep_last: int | None = None
    ) -> Path:
        """Save ``{folder}/{prefix}_outer_{N}`` and keep only the newest ``keep_last`` checkpoints."""
        out = self.save(os.path.join(folder, f"{prefix}_outer_{self.num_outer_steps}"))
        ckpt.prune_checkpoints(folder, prefix, keep_last)
        if self.verbose >= 1:
            print(f"checkpoint: {out}")
        return out

    def checkpoint_state(self) -> dict[str, Any]:
        """The progress a checkpoint records besides weights, optimizer and task source."""
        return {
            "algorithm_class": import_path_of(type(self)),
            "num_outer_steps": self.num_outer_steps,
            "outer_steps": self.outer_steps,
            "seed": self.seed,
            "task_seed_mode": self._task_seed_mode,
            "meta_lr_current": self.current_meta_lr,
            "last_optimizer_meta_lr": self._last_optimizer_meta_lr,
            **self.step_history.state(),
        }

    @classmethod
    def load(cls: type[SelfSurface], path: str | os.PathLike[str], **overrides: Any) -> SelfSurface:
        """A trainer restored from a checkpoint folder, ready to ``learn(reset_num_timesteps=False)``.

        The trainer is of the class the checkpoint records (a subclass of ``cls``; use
        :func:`load_trainer` to load whatever class it is). Constructor arguments come from the
        checkpoint's ``config.pkl``; ``overrides`` replace them (e.g. ``backend``,
        ``num_workers``, ``ray_address``), and must supply them all when the checkpoint could not
        store them.
        """
        return ckpt.load_trainer(path, cls, overrides)

    def load_checkpoint_state(self, folder: Path, state: dict[str, Any] | None = None) -> None:
        """Restore weights, optimizer, schedule position and task-generator state from ``folder``."""
        if state is None:
            state = ckpt.read_trainer_state(folder)
        ckpt.restore_trainer_files(Path(folder), self)
        self.num_outer_steps = int(state["num_outer_steps"])
        self.outer_steps = int(state["outer_steps"])
        self.seed = int(state["seed"])
        self._task_seed_mode = state.get("task_seed_mode", "generator")
        self.current_meta_lr = state.get("meta_lr_current")
        self._last_optimizer_meta_lr = state.get("last_optimizer_meta_lr")
        self.step_history.restore(state, Path(folder), self.num_outer_steps)
