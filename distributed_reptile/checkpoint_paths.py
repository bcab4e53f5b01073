"""What a path given as a checkpoint is, in a user's words, checked before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distributed_reptile.checkpoint import CheckpointError, latest_checkpoint, read_trainer_state

#: What a checkpoint path looks like, for messages.
EXAMPLE = "<run>/checkpoints/meta_ckpt_outer_10"


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a usable checkpoint (``None``: it is one): a missing path, a file, a
    run folder (its last checkpoint named), an incomplete or corrupted checkpoint (the last
    complete one beside it named)."""
    return _read(folder)[0]


def checked_state(folder: Path) -> tuple[str | None, dict[str, Any]]:
    """:func:`checkpoint_problem` and, when there is none, the checkpoint's trainer state."""
    return _read(folder)


def _read(folder: Path) -> tuple[str | None, dict[str, Any]]:
    if not folder.exists():
        return f"no such checkpoint folder (give a folder such as {EXAMPLE}).", {}
    if not folder.is_dir():
        return f"a file, not a checkpoint folder (such as {EXAMPLE}).", {}
    if (folder / "checkpoints").is_dir():
        last = latest_checkpoint(folder / "checkpoints", "meta_ckpt")
        hint = f"its last checkpoint is {last}" if last else "it holds no complete checkpoint"
        return f"this is a run folder, not a checkpoint: {hint}.", {}
    try:
        return None, read_trainer_state(folder)
    except CheckpointError as err:
        last = latest_checkpoint(folder.parent, folder.name.rsplit("_outer_", 1)[0])
        if last is not None and last.resolve() != folder.resolve():
            return f"{err} The last complete checkpoint beside it is {last}.", {}
        return str(err), {}


def check_fresh_save_path(save_path: str | None, prefix: str) -> None:
    """Refuse to start a new run (``learn(reset_num_timesteps=True)``) whose ``save_path`` holds
    checkpoints of an earlier one: the two runs' checkpoints would mix, and the newest-numbered one
    (what ``--resume`` and :func:`latest_checkpoint` pick) could be the other run's."""
    if save_path is None:
        return
    from distributed_reptile.checkpoint import list_checkpoints

    found = list_checkpoints(save_path, prefix)
    if not found:
        return
    names = ", ".join(p.name for p in found[-3:])
    raise ValueError(
        f"save_path={save_path!r} holds checkpoints of an earlier run ({names}); a new run never "
        "writes over them. Give a new save_path, remove them, or continue that run: "
        "load its last checkpoint and call learn(reset_num_timesteps=False)."
    )


__all__ = ["EXAMPLE", "check_fresh_save_path", "checked_state", "checkpoint_problem"]
