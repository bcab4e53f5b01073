"""Which errors mean that a process of the run was lost for good, and the run's error then.

Ray's errors are recognised by their class names (``ray.exceptions``), without importing Ray, so
that the outer loop, which knows no backend, can end a run with a
:class:`~distributed_reptile.errors.RunInterruptedError` that says how to resume.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any

from distributed_reptile.errors import RunInterruptedError, TaskSourceLostError

if TYPE_CHECKING:
    from distributed_reptile.callbacks import CheckpointCallback

#: Ray errors that mean a process (an actor, a worker, a node, Ray itself) died, by class name;
#: subclasses (``ActorDiedError``, ``ActorUnavailableError``, ``OwnerDiedError``...) included.
_RAY_DEATHS = {
    "RayActorError": "Ray actor",
    "WorkerCrashedError": "Ray worker process",
    "OutOfMemoryError": "Ray worker process",
    "ObjectLostError": "Ray cluster",
    "NodeDiedError": "Ray cluster",
    "LocalRayletDiedError": "Ray cluster",
    "RaySystemError": "Ray cluster",
}
_RAY_WORKER = re.compile(r" on Ray worker (\d+)\b")


def ray_death(exc: BaseException | None) -> str | None:
    """What kind of process a Ray error says died, or ``None`` if ``exc`` is no such error."""
    if exc is None:
        return None
    for cls in type(exc).__mro__:
        if cls.__module__ == "ray.exceptions" and cls.__name__ in _RAY_DEATHS:
            return _RAY_DEATHS[cls.__name__]
    return None


def lost_process(exc: BaseException) -> tuple[str, BaseException] | None:
    """What died, and the error that says so, when ``exc`` reports a process that the run could
    not replace: a task source that could not be rebuilt, an inner loop whose worker kept dying
    past its retries (``TaskFailedError`` whose cause is a Ray death), or a Ray death error that
    escaped; else ``None`` (a task that raised or timed out is not a lost process)."""
    if isinstance(exc, TaskSourceLostError):
        return "task source", exc.__cause__ if exc.__cause__ is not None else exc
    cause = getattr(exc, "cause", None)
    if type(exc).__name__ == "TaskFailedError" and isinstance(cause, BaseException):
        if ray_death(cause) is None:
            return None
        match = _RAY_WORKER.search(str(exc))
        worker = getattr(exc, "worker", None) or (match.group(1) if match else "")
        return f"learner worker {worker}".strip(), cause
    kind = ray_death(exc)
    return (kind, exc) if kind is not None else None


def checkpoint_path(checkpointer: CheckpointCallback | None) -> str | None:
    """The folder of the newest checkpoint ``checkpointer`` wrote in this ``learn`` call (named
    as ``save_checkpoint`` names it), or ``None``."""
    if checkpointer is None or checkpointer.last_saved_step <= 0:
        return None
    name = f"{checkpointer.save_prefix}_outer_{checkpointer.last_saved_step}"
    return os.path.join(checkpointer.save_path, name)


def raise_if_interrupted(trainer: Any, checkpointer: CheckpointCallback | None) -> None:
    """For ``learn``'s ``finally`` clause: when the exception leaving ``learn`` reports a lost
    process (:func:`lost_process`), raise a :class:`RunInterruptedError` from the error that
    says so, naming the outer step, the last checkpoint and how to resume; else return (the
    exception, if any, goes on as it was).

    The exception is the one in flight through the caller's frame: one that an enclosing
    ``except`` block of the caller's caller is handling is not ``learn``'s and is left alone.
    """
    exc = sys.exc_info()[1]
    if exc is None or exc.__traceback__ is None:
        return
    if exc.__traceback__.tb_frame is not sys._getframe(1):
        return
    lost = lost_process(exc)
    if lost is None:
        return
    component, cause = lost
    detail = _first_line(str(exc) if cause is not exc else f"{type(exc).__name__}: {exc}")
    raise RunInterruptedError(
        component,
        min(trainer.num_outer_steps + 1, max(trainer.outer_steps, 1)),
        checkpoint_path(checkpointer),
        detail=detail,
        trainer_class=type(trainer).__name__,
    ) from cause


def _first_line(text: str, limit: int = 400) -> str:
    """The first line of an error's message (Ray's run over many lines), at most ``limit``
    characters; the whole error stays in the chain."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


__all__ = ["checkpoint_path", "lost_process", "raise_if_interrupted", "ray_death"]
