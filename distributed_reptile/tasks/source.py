"""TaskSource: the one object the trainer asks for tasks, in-process or inside a named Ray actor."""

from __future__ import annotations

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
        #: steps' tasks ahead of time: the generator has ``mark()`` / ``rollback(position)`` /
        #: ``release_marks()`` / ``state_dict_at(position)`` (as
        #: :class:`~distributed_reptile.TaskGenerator`). Other generators are not drawn ahead
        #: (undoing through ``load_state_dict`` would make even an uninterrupted run depend on
        #: their ``state_dict`` being complete).
        self.can_prefetch = self._undoes_own_draws()
        # num_sampled at each mark (one per step drawn ahead; the generator keeps the rest)
        self._marks: list[int] = []

    def ping(self) -> bool:
        return True

    def prefetchable(self) -> bool:
        return self.can_prefetch

    def restorable(self) -> bool:
        """Whether a lost source can be rebuilt from its state: the generator has
        ``state_dict()`` and ``load_state_dict()``."""
        return all(hasattr(self.generator, m) for m in ("state_dict", "load_state_dict"))

    def startup(self) -> dict[str, Any]:
        """What the Ray proxy asks first, in one call: whether the source can draw ahead and be
        rebuilt, and (when it can be) its state."""
        restorable = self.restorable()
        return {
            "prefetch": self.can_prefetch,
            "restorable": restorable,
            "state": self.state_dict() if restorable else None,
        }

    def sample_specs_with_state(
        self, meta_steps: list[int], seeds: list[int | None], with_state: bool
    ) -> tuple[dict[str, Any] | None, list[TaskSpec]]:
        """:meth:`sample_specs`, with (``with_state``) the state from before the draws."""
        state = self.state_dict() if with_state else None
        return state, self.sample_specs(meta_steps, seeds)

    def sample_steps_with_state(
        self, steps: list[tuple[list[int], list[int | None]]], with_state: bool
    ) -> tuple[dict[str, Any] | None, list[list[TaskSpec]]]:
        """:meth:`sample_steps`, with (``with_state``) the state from before the draws."""
        state = self.state_dict() if with_state else None
        return state, self.sample_steps(steps)

    def restore(self, state: dict[str, Any], done: list[tuple[Any, ...]]) -> dict[str, Any]:
        """Load ``state``, redo what was ``done`` since it, in order (``("sample", meta_steps,
        seeds)``: a draw; ``("reset_history",)``), and return the state reached: a new source
        that continues exactly where a lost one stood."""
        self.load_state_dict(state)
        for op in done:
            if op[0] == "sample":
                self.sample_specs(op[1], op[2])
            elif op[0] == "reset_history":
                self.reset_history()
            else:
                raise ValueError(f"Unknown task-source operation {op[0]!r} to redo.")
        return self.state_dict()

    def sample_specs(self, meta_steps: list[int], seeds: list[int | None]) -> list[TaskSpec]:
        """One spec per meta step, drawn in order."""
        return [self._sample(m, s) for m, s in zip(meta_steps, seeds, strict=True)]

    def sample_steps(self, steps: list[tuple[list[int], list[int | None]]]) -> list[list[TaskSpec]]:
        """The tasks of several outer steps ahead of time (``(meta_steps, seeds)`` per step),
        with a mark before each step, so :meth:`rollback` can undo the steps not used.

        Stops at the first step whose draw fails, undoing that step's partial draw: the caller
        gets the steps before it, and the failure again when it asks for that step itself.
        """
        self._release()
        out: list[list[TaskSpec]] = []
        for meta_steps, seeds in steps:
            self._set_mark()
            try:
                out.append(self.sample_specs(meta_steps, seeds))
            except Exception:
                self.rollback(len(out))
                break
        return out

    def prefetch(self, steps: list[tuple[list[int], list[int | None]]]) -> None:
        """Nothing to do in-process: drawing ahead only pays when the source is a Ray actor."""

    def rollback(self, position: int = 0) -> None:
        """Undo the draws made since mark ``position`` (the first step drawn ahead: 0)."""
        num_sampled = self._num_sampled_at(position)
        self.generator.rollback(position)
        self.num_sampled = num_sampled
        del self._marks[position:]

    def _num_sampled_at(self, position: int) -> int:
        if not 0 <= position < len(self._marks):
            raise RuntimeError(
                f"No marked draw {position} ({len(self._marks)} held): nothing to undo."
            )
        return self._marks[position]

    def _set_mark(self) -> None:
        if not self.can_prefetch:
            raise RuntimeError(
                f"{type(self.generator).__name__} cannot undo draws (it lacks mark() / "
                "rollback() / release_marks() / state_dict_at()): its tasks cannot be drawn ahead."
            )
        self.generator.mark()
        self._marks.append(self.num_sampled)

    def _release(self) -> None:
        """Keep the draws made so far (forget the marks)."""
        if self._marks:
            self.generator.release_marks()
        self._marks = []

    def _undoes_own_draws(self) -> bool:
        methods = ("mark", "rollback", "release_marks", "state_dict_at")
        return all(hasattr(self.generator, m) for m in methods)

    def reset_history(self) -> None:
        self._release()
        if hasattr(self.generator, "reset_history"):
            self.generator.reset_history()

    def history(self) -> list[dict[str, Any]] | None:
        return getattr(self.generator, "selected_tasks", None)

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """The source's state, or (``position``) its state at that mark: before the steps drawn
        ahead from there on, which stay drawn (a checkpoint does not undo them)."""
        if position is not None:
            num_sampled = self._num_sampled_at(position)
            return {
                "generator": self.generator.state_dict_at(position),
                "num_sampled": num_sampled,
            }
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
        self._release()
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
