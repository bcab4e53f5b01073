"""TaskSource: the one object the trainer asks for tasks, in-process or inside a named Ray actor."""

from __future__ import annotations

import copy
import pickle
import warnings
from typing import Any

import cloudpickle

from distributed_reptile.tasks.spec import TaskSpec, check_task_triple


class TaskSource:
    """Owns a task generator and turns its answers into picklable :class:`TaskSpec` objects.

    Works with :class:`~distributed_reptile.TaskGenerator` (which builds specs from seeds, so
    workers build their own envs) and with any user generator that implements the original
    protocol ``get_task(meta_step, seed=None) -> (env, info, origin_meta_step)`` and
    ``reset_history()`` (the env object itself is then shipped to the worker).

    :param generator_cls: the task generator class.
    :param generator_params: keyword arguments of ``generator_cls``.
    :param require_picklable: check that every spec can be pickled (the Ray backend ships them).
    """

    def __init__(
        self,
        generator_cls: type,
        generator_params: dict[str, Any],
        require_picklable: bool = False,
    ) -> None:
        self.generator = generator_cls(**generator_params)
        if not hasattr(self.generator, "get_task") and not hasattr(self.generator, "sample_spec"):
            raise TypeError(
                f"{generator_cls.__name__} is not a task generator: it needs a "
                "get_task(meta_step, seed=None) -> (env, info, origin_meta_step) method."
            )
        self.require_picklable = require_picklable
        self.num_sampled = 0
        #: Whether draws can be undone (:meth:`rollback`), so the trainer may draw the next outer
        #: step's tasks ahead of time: the generator has ``mark()`` / ``rollback()`` (as
        #: :class:`~distributed_reptile.TaskGenerator`) or ``state_dict()`` / ``load_state_dict()``.
        self.can_prefetch = (
            hasattr(self.generator, "mark") and hasattr(self.generator, "rollback")
        ) or (hasattr(self.generator, "state_dict") and hasattr(self.generator, "load_state_dict"))
        self._mark: tuple[Any, int] | None = None

    def ping(self) -> bool:
        return True

    def prefetchable(self) -> bool:
        return self.can_prefetch

    def sample_specs(
        self, meta_steps: list[int], seeds: list[int | None], mark: bool = False
    ) -> list[TaskSpec]:
        """One spec per meta step, drawn in order.

        :param mark: remember the state before these draws, so :meth:`rollback` can undo them
            (the trainer's draw of the next outer step's tasks ahead of time).
        """
        if mark:
            self._set_mark()
        return [self._sample(m, s) for m, s in zip(meta_steps, seeds, strict=True)]

    def prefetch(self, meta_steps: list[int], seeds: list[int | None]) -> None:
        """Nothing to do in-process: drawing ahead only pays when the source is a Ray actor."""

    def rollback(self) -> None:
        """Undo the draws made since the last ``sample_specs(..., mark=True)``."""
        if self._mark is None:
            raise RuntimeError("rollback() without a marked draw: nothing to undo.")
        gen_state, num_sampled = self._mark
        if gen_state is None:
            self.generator.rollback()
        else:
            self.generator.load_state_dict(gen_state)
        self.num_sampled = num_sampled
        self._mark = None

    def _set_mark(self) -> None:
        if not self.can_prefetch:
            raise RuntimeError(
                f"{type(self.generator).__name__} cannot undo draws (it has neither mark() / "
                "rollback() nor state_dict() / load_state_dict()): its tasks cannot be drawn ahead."
            )
        if hasattr(self.generator, "mark") and hasattr(self.generator, "rollback"):
            self.generator.mark()
            self._mark = (None, self.num_sampled)
        else:
            self._mark = (copy.deepcopy(self.generator.state_dict()), self.num_sampled)

    def reset_history(self) -> None:
        self._mark = None
        if hasattr(self.generator, "reset_history"):
            self.generator.reset_history()

    def history(self) -> list[dict[str, Any]] | None:
        return getattr(self.generator, "selected_tasks", None)

    def state_dict(self) -> dict[str, Any]:
        gen_state = None
        if hasattr(self.generator, "state_dict"):
            gen_state = self.generator.state_dict()
        else:
            warnings.warn(
                f"{type(self.generator).__name__} has no state_dict(): a resumed run cannot draw "
                "exactly the tasks an uninterrupted run would have drawn.",
                stacklevel=2,
            )
        return {"generator": gen_state, "num_sampled": self.num_sampled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._mark = None
        if state.get("generator") is not None and hasattr(self.generator, "load_state_dict"):
            self.generator.load_state_dict(state["generator"])
        self.num_sampled = int(state.get("num_sampled", 0))

    def _sample(self, meta_step: int, seed: int | None) -> TaskSpec:
        where = f"{type(self.generator).__name__}.get_task(meta_step={meta_step})"
        if hasattr(self.generator, "sample_spec"):
            spec = self.generator.sample_spec(meta_step, seed=seed)
            if not isinstance(spec, TaskSpec):
                raise TypeError(
                    f"{type(self.generator).__name__}.sample_spec must return a TaskSpec."
                )
        else:
            out = (
                self.generator.get_task(meta_step)
                if seed is None
                else self.generator.get_task(meta_step, seed=seed)
            )
            env, info, origin = check_task_triple(out, where=where)
            spec = TaskSpec(meta_step=meta_step, info=info, origin_meta_step=origin, env=env)
        if self.require_picklable:
            _check_picklable(spec, where)
        self.num_sampled += 1
        return spec


def _check_picklable(spec: TaskSpec, where: str) -> None:
    try:
        cloudpickle.dumps(spec)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        what = "env" if spec.env is not None else "task callable or its parameters"
        raise TypeError(
            f"The {what} returned by {where} cannot be pickled, so it cannot be sent to a Ray worker "
            f"({type(exc).__name__}: {exc}). Use TaskGenerator(task_callable=...) so each worker builds "
            "its own env from a seed, or use backend='serial'."
        ) from exc
