"""Errors that end a run because a process it needs was lost, and how to resume after one."""

from __future__ import annotations


class TaskSourceLostError(RuntimeError):
    """The task source's process died and the source could not be rebuilt (the message says
    why); the Ray error is its ``__cause__``."""


class RunInterruptedError(RuntimeError):
    """A run stopped because a process it needs died and could not be replaced.

    The error that reported the death (Ray's) is the ``__cause__``.

    :param component: what was lost: ``"task source"``, ``"learner worker 1"``, ``"Ray cluster"``.
    :param outer_step: the outer step that was running (1-based).
    :param last_checkpoint: the newest checkpoint the run wrote, or ``None``.
    :param detail: what happened, in a sentence (e.g. the message of the error it replaces).
    :param trainer_class: the trainer's class name, for the Python resume line.
    """

    def __init__(
        self,
        component: str,
        outer_step: int,
        last_checkpoint: str | None,
        detail: str = "",
        trainer_class: str = "ReptileMetaRL",
    ) -> None:
        self.component = component
        self.outer_step = int(outer_step)
        self.last_checkpoint = last_checkpoint
        if last_checkpoint is not None:
            resume = (
                f"The last checkpoint is {last_checkpoint}. Resume with `distributed-reptile "
                f"train <config> --resume {last_checkpoint}`, or in Python with "
                f"`{trainer_class}.load({last_checkpoint!r})` then "
                "`learn(reset_num_timesteps=False)`."
            )
        else:
            resume = (
                "No checkpoint was written in this run, so it cannot be resumed from where it "
                "stopped: set save_freq (and save_path) to write checkpoints, which resume with "
                "`distributed-reptile train <config> --resume <checkpoint>`, or "
                f"`{trainer_class}.load(path)` then `learn(reset_num_timesteps=False)`."
            )
        detail = f" {detail.strip()}" if detail.strip() else ""
        super().__init__(
            f"The run was interrupted in outer step {self.outer_step}: the {component} died and "
            f"could not be replaced.{detail} {resume}"
        )


__all__ = ["RunInterruptedError", "TaskSourceLostError"]
