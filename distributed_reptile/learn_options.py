"""``learn()``'s convenience options (``save_freq``, ``eval_freq``...) turned into callbacks.

Kept apart from the trainer so that the trainer does not import the evaluation package (which
loads trainers) and from :mod:`distributed_reptile.callbacks` (which the evaluation imports).
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from distributed_reptile.callbacks import (
    CallbackList,
    CheckpointCallback,
    MaybeCallback,
    MetaCallback,
    to_callback,
)
from distributed_reptile.checkpoint_paths import check_fresh_save_path

if TYPE_CHECKING:
    from distributed_reptile.records import StepRecord


class StepRecordsFile(MetaCallback):
    """Readies the trainer's step-records file when ``learn`` starts and appends each outer
    step's line once the callbacks before it (the user's, the evaluation) have added their keys,
    and before the checkpoint callback saves.

    :param path: the file (``None``: no file).
    :param keep_records: step records to keep in memory (``None``: as before).
    """

    def __init__(self, path: str | os.PathLike[str] | None, keep_records: int | None) -> None:
        super().__init__()
        self.path, self.keep_records = path, keep_records

    def _on_training_start(self) -> None:
        assert self.trainer is not None
        history = self.trainer.step_history
        history.start(self.path, self.trainer.num_outer_steps, self.keep_records)

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        assert self.trainer is not None
        self.trainer.step_history.flush()
        return True


def step_records_file(
    step_records_path: str | os.PathLike[str] | None,
    save_path: str | None,
    save_prefix: str = "meta_ckpt",
) -> str | os.PathLike[str] | None:
    """The step-records file a ``learn`` call names: ``step_records_path``, else
    ``{save_path}/{save_prefix}_step_records.jsonl``, else none (then a run that continues keeps
    the file it had, see :meth:`~distributed_reptile.step_history.StepHistory.start`)."""
    if step_records_path is not None:
        return step_records_path
    if save_path is not None:
        return os.path.join(save_path, f"{save_prefix}_step_records.jsonl")
    return None


def learn_callbacks(
    callback: MaybeCallback,
    *,
    save_freq: int = 0,
    save_path: str | None = None,
    save_prefix: str = "meta_ckpt",
    keep_last: int | None = None,
    eval_freq: int = 0,
    eval_kwargs: dict[str, Any] | None = None,
    step_records_path: str | os.PathLike[str] | None = None,
    keep_records: int | None = None,
    fresh: bool = False,
) -> tuple[CallbackList, CheckpointCallback | None]:
    """The callbacks of a ``learn`` call: the user's, then the evaluation every ``eval_freq``
    outer steps, then the step-records file's line (:class:`StepRecordsFile`), then a checkpoint
    every ``save_freq`` outer steps (returned on its own too, so the trainer knows which step it
    saved last). Checks the options before anything runs, and that a ``fresh`` run (not a
    continued one) does not write its checkpoints among an earlier run's."""
    if save_freq < 0:
        raise ValueError(f"save_freq must be >= 0, got {save_freq}.")
    if save_freq > 0 and save_path is None:
        raise ValueError("save_freq > 0 needs save_path: the folder where checkpoints go.")
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last <= 0
    ):
        raise ValueError(f"keep_last must be a positive integer, got {keep_last!r}.")
    if eval_freq < 0:
        raise ValueError(f"eval_freq must be >= 0, got {eval_freq}.")
    if keep_records is not None and (
        isinstance(keep_records, bool) or not isinstance(keep_records, int) or keep_records <= 0
    ):
        raise ValueError(f"keep_records must be a positive integer, got {keep_records!r}.")
    if fresh:
        check_fresh_save_path(save_path, save_prefix)
    callbacks = to_callback(callback)
    if eval_freq > 0:
        from distributed_reptile.evaluation.callback import MetaEvalCallback

        callbacks.callbacks.append(MetaEvalCallback(eval_freq, **(eval_kwargs or {})))
    path = step_records_file(step_records_path, save_path, save_prefix)
    callbacks.callbacks.append(StepRecordsFile(path, keep_records))
    checkpointer = None
    if save_freq > 0:
        assert save_path is not None
        checkpointer = CheckpointCallback(save_freq, save_path, save_prefix, keep_last)
        callbacks.callbacks.append(checkpointer)
    return callbacks, checkpointer


def log_folders(
    run_name: str,
    tensorboard_logs: str | None,
    log_inner_tasks: bool = False,
    inner_tb_log_root: str | None = None,
) -> tuple[str, str | None]:
    """The run's TensorBoard folder name (``{run_name}_{timestamp}``) and the folder of the inner
    loops' own logs (``None`` unless ``log_inner_tasks``): ``inner_tb_log_root/<run>``, else
    ``<tensorboard_logs>/<run>/inner``, else ``inner-logs/<run>``."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    run_stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_name)}_{stamp}"
    if not log_inner_tasks:
        return run_stem, None
    if inner_tb_log_root is not None:
        return run_stem, os.path.join(inner_tb_log_root, run_stem)
    if tensorboard_logs is not None:
        return run_stem, os.path.join(tensorboard_logs, run_stem, "inner")
    return run_stem, os.path.join("inner-logs", run_stem)
