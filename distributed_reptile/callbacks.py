"""Meta-level callbacks, shaped like SB3's ``BaseCallback`` but called once per outer step."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from distributed_reptile.algorithms.base import BaseMetaAlgorithm
    from distributed_reptile.records import StepRecord


class MetaCallback:
    """Base class of meta-level callbacks.

    Hooks, in order: ``on_training_start`` once, then per outer step ``on_outer_step_start`` and
    ``on_outer_step_end`` (which sees the step record: returns, env steps, timings, the tasks drawn,
    the update norm), then ``on_training_end``. Returning ``False`` from ``on_outer_step_end``
    stops the run cleanly after that step (the final checkpoint is still written when saving is on).
    Subclasses override the underscored methods.

    :param verbose: 0 silent, 1 a line when the callback acts.
    """

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose
        self.trainer: BaseMetaAlgorithm | None = None
        self.num_outer_steps = 0

    def init_callback(self, trainer: BaseMetaAlgorithm) -> None:
        self.trainer = trainer
        self._init_callback()

    def on_training_start(self) -> None:
        self._on_training_start()

    def on_outer_step_start(self, outer_step: int) -> None:
        self._on_outer_step_start(outer_step)

    def on_outer_step_end(self, record: StepRecord) -> bool:
        assert self.trainer is not None
        self.num_outer_steps = self.trainer.num_outer_steps
        return self._on_outer_step_end(record) is not False

    def on_training_end(self) -> None:
        self._on_training_end()

    # overridable
    def _init_callback(self) -> None:
        pass

    def _on_training_start(self) -> None:
        pass

    def _on_outer_step_start(self, outer_step: int) -> None:
        pass

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        return True

    def _on_training_end(self) -> None:
        pass


class CallbackList(MetaCallback):
    """Several callbacks called in order; the run stops if any of them says stop."""

    def __init__(self, callbacks: Sequence[MetaCallback]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)

    def _init_callback(self) -> None:
        assert self.trainer is not None
        for cb in self.callbacks:
            cb.init_callback(self.trainer)

    def _on_training_start(self) -> None:
        for cb in self.callbacks:
            cb.on_training_start()

    def _on_outer_step_start(self, outer_step: int) -> None:
        for cb in self.callbacks:
            cb.on_outer_step_start(outer_step)

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        answers = [
            cb.on_outer_step_end(record) for cb in self.callbacks
        ]  # every callback sees the step
        return all(answers)

    def _on_training_end(self) -> None:
        for cb in self.callbacks:
            cb.on_training_end()


MaybeCallback = MetaCallback | Sequence[MetaCallback] | None


def to_callback(callback: MaybeCallback) -> CallbackList:
    """Normalise ``learn(callback=...)``: ``None``, one callback, a list, or a ``CallbackList``."""
    if callback is None:
        return CallbackList([])
    if isinstance(callback, CallbackList):
        return callback
    if isinstance(callback, MetaCallback):
        return CallbackList([callback])
    items = list(callback)
    bad = [c for c in items if not isinstance(c, MetaCallback)]
    if bad:
        raise TypeError(
            f"callback must be a MetaCallback, a list of them or a CallbackList; got {bad[0]!r}. "
            "Subclass distributed_reptile.callbacks.MetaCallback (SB3's step-level callbacks go in "
            "inner_loop_params={'callback': ...})."
        )
    return CallbackList(items)


class StopOnWallClock(MetaCallback):
    """Stop after the first outer step that ends ``seconds`` or more after training started.

    :param seconds: wall-clock budget of the run.
    """

    def __init__(self, seconds: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        if not seconds > 0:
            raise ValueError(f"StopOnWallClock needs a positive number of seconds, got {seconds}.")
        self.seconds = float(seconds)
        self._start = 0.0

    def _on_training_start(self) -> None:
        self._start = time.monotonic()

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        elapsed = time.monotonic() - self._start
        if elapsed >= self.seconds:
            if self.verbose:
                print(
                    f"StopOnWallClock: {elapsed:.1f}s >= {self.seconds:.1f}s, stopping after outer step {record['outer_step']}"
                )
            return False
        return True


class StopOnStepRecord(MetaCallback):
    """Stop once ``record[key]`` reaches ``threshold`` (``mode="max"``: >=, ``"min"``: <=).

    :param key: a step-record key, e.g. ``"ep_return_mean"``.
    :param threshold: the value to reach.
    :param mode: ``"max"`` to stop at or above it, ``"min"`` at or below it.
    """

    def __init__(
        self, key: str, threshold: float, mode: Literal["max", "min"] = "max", verbose: int = 0
    ) -> None:
        super().__init__(verbose)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.key, self.threshold, self.mode = key, float(threshold), mode

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        if self.key not in record:
            raise KeyError(
                f"StopOnStepRecord: the step record has no {self.key!r}; keys: {sorted(record)}"
            )
        value = record[self.key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return True
        reached = value >= self.threshold if self.mode == "max" else value <= self.threshold
        if reached and self.verbose:
            print(f"StopOnStepRecord: {self.key}={value:g} reached {self.threshold:g}")
        return not reached


class CheckpointCallback(MetaCallback):
    """Write a resumable checkpoint every ``save_freq`` outer steps.

    :param save_freq: outer steps between checkpoints.
    :param save_path: folder of the checkpoints (``{save_prefix}_outer_{N}`` inside).
    :param save_prefix: checkpoint name prefix.
    :param keep_last: keep only the newest ``keep_last`` (``None``: all).
    """

    def __init__(
        self,
        save_freq: int,
        save_path: str,
        save_prefix: str = "meta_ckpt",
        keep_last: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if save_freq <= 0:
            raise ValueError(f"save_freq must be positive, got {save_freq}.")
        self.save_freq, self.save_path, self.save_prefix, self.keep_last = (
            save_freq,
            save_path,
            save_prefix,
            keep_last,
        )
        self.last_saved_step = -1

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        assert self.trainer is not None
        if self.trainer.num_outer_steps % self.save_freq == 0:
            self.trainer.save_checkpoint(self.save_path, self.save_prefix, self.keep_last)
            self.last_saved_step = self.trainer.num_outer_steps
        return True


__all__ = [
    "CallbackList",
    "CheckpointCallback",
    "MaybeCallback",
    "MetaCallback",
    "StopOnStepRecord",
    "StopOnWallClock",
    "to_callback",
]
