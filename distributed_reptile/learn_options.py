"""``learn()``'s convenience options (``save_freq``, ``eval_freq``...) turned into callbacks.

Kept apart from the trainer so that the trainer does not import the evaluation package (which
loads trainers) and from :mod:`distributed_reptile.callbacks` (which the evaluation imports).
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any

from distributed_reptile.callbacks import (
    CallbackList,
    CheckpointCallback,
    MaybeCallback,
    to_callback,
)


def learn_callbacks(
    callback: MaybeCallback,
    *,
    save_freq: int = 0,
    save_path: str | None = None,
    save_prefix: str = "meta_ckpt",
    keep_last: int | None = None,
    eval_freq: int = 0,
    eval_kwargs: dict[str, Any] | None = None,
) -> tuple[CallbackList, CheckpointCallback | None]:
    """The callbacks of a ``learn`` call: the user's, then the evaluation every ``eval_freq``
    outer steps, then a checkpoint every ``save_freq`` outer steps (returned on its own too, so
    the trainer knows which step it saved last). Checks the options before anything runs."""
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
    callbacks = to_callback(callback)
    if eval_freq > 0:
        from distributed_reptile.evaluation.callback import MetaEvalCallback

        callbacks.callbacks.append(MetaEvalCallback(eval_freq, **(eval_kwargs or {})))
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
