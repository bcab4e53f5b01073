"""TaskGenerator: static or callable-based task sampling with a revisit history."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from distributed_reptile.tasks.spec import TaskCallable, TaskSpec, check_task_pair

ListTask = list[tuple[gym.Env, dict[str, Any]]]
RevisitWeightFn = Callable[[list[dict[str, Any]]], Sequence[float]]

SAMPLING_METHODS = ("cyclic", "random", "weighted")
_MAX_TASK_SEED = 2**31 - 1
#: Past tasks a callable-mode generator keeps for revisits unless told otherwise (a record is
#: about 0.8 KB in memory and 70 bytes pickled).
DEFAULT_HISTORY_SIZE = 10_000


def accepts_named_arg(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes ``name`` as a keyword argument."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class TaskGenerator:
    """Meta-RL task generator.

    Two modes:

    * static: ``tasks`` is a list of ``(env, info)``; ``sampling_method`` picks one per meta step
      (``"cyclic"``: ``meta_step % n``, ``"random"``, or ``"weighted"`` with ``sampling_weights``).
    * callable: ``task_callable(random_seed=..., **task_callable_params) -> (env, info)`` builds a
      task from a seed. New seeds come from the generator's own RNG (``generator_seed``). Past tasks
      are kept in a history and, once ``meta_step >= revisit_start``, revisited with probability
      ``revisit_ratio``; which one follows ``sampling_method`` (``"cyclic"``, ``"random"``, or
      ``"weighted"`` via ``revisit_weight_fn(history) -> weights``).

    :param tasks: static list of ``(env, info)`` pairs.
    :param task_callable: builds ``(env, info)`` from ``random_seed`` (must accept it by name).
    :param task_callable_params: extra keyword arguments of ``task_callable``.
    :param revisit_ratio: probability of revisiting a past task (callable mode).
    :param revisit_start: first meta step at which revisits may happen.
    :param sampling_method: ``"cyclic"``, ``"random"`` or ``"weighted"``.
    :param sampling_weights: one weight per static task (``"weighted"`` sampling).
    :param generator_seed: seed of the generator's RNG; ``None`` is non-deterministic (the trainer
        fills it from its own ``seed`` when you leave it out).
    :param revisit_weight_fn: ``history -> weights`` for weighted revisits.
    :param history: keep a history of sampled tasks (``False`` disables revisits).
    :param history_size: the most past tasks the history keeps (the newest; older ones are no
        longer revisited), so a long run's memory stays bounded; ``None`` keeps every task.
        Runs that draw fewer new tasks than this draw the same tasks as with ``None``.
    """

    def __init__(
        self,
        tasks: ListTask | None = None,
        task_callable: TaskCallable | None = None,
        task_callable_params: dict[str, Any] | None = None,
        revisit_ratio: float = 0.15,
        revisit_start: int = 1,
        sampling_method: str = "random",
        sampling_weights: Sequence[float] | None = None,
        generator_seed: int | None = None,
        revisit_weight_fn: RevisitWeightFn | None = None,
        history: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
    ) -> None:
        if (tasks is None) == (task_callable is None):
            raise ValueError(
                "TaskGenerator needs exactly one of `tasks` (a list of (env, info)) or "
                "`task_callable` (a function random_seed -> (env, info))."
            )
        if sampling_method not in SAMPLING_METHODS:
            raise ValueError(
                f"Unknown sampling_method {sampling_method!r}: use one of {', '.join(SAMPLING_METHODS)}."
            )
        if tasks is not None:
            tasks = list(tasks)
            if not tasks:
                raise ValueError("`tasks` must be a non-empty list of (env, info) pairs.")
            for i, pair in enumerate(tasks):
                check_task_pair(
                    tuple(pair) if isinstance(pair, list) else pair, where=f"tasks[{i}]"
                )
            if sampling_method == "weighted":
                if sampling_weights is None or len(sampling_weights) != len(tasks):
                    raise ValueError(
                        "sampling_method='weighted' needs `sampling_weights` with one weight per task "
                        f"({len(tasks)} tasks, got "
                        f"{'none' if sampling_weights is None else len(sampling_weights)})."
                    )
        if task_callable is not None:
            if not callable(task_callable):
                raise TypeError(
                    f"task_callable must be callable, got {type(task_callable).__name__}."
                )
            if not accepts_named_arg(task_callable, "random_seed"):
                raise TypeError(
                    f"task_callable {getattr(task_callable, '__name__', task_callable)!r} must accept a "
                    "`random_seed` keyword argument: define it as `def make_task(random_seed, **params)`."
                )
        if not 0.0 <= revisit_ratio <= 1.0:
            raise ValueError(f"revisit_ratio must lie in [0, 1], got {revisit_ratio}.")
        if history_size is not None and (
            isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1
        ):
            raise ValueError(
                f"history_size must be a positive whole number of tasks (or None to keep every "
                f"task), got {history_size!r}."
            )

        self.tasks = tasks
        self.task_callable = task_callable
        self.task_callable_params = dict(task_callable_params or {})
        self.revisit_ratio = float(revisit_ratio)
        self.revisit_start = int(revisit_start)
        self.sampling_method = sampling_method
        self.sampling_weights = (
            None if sampling_weights is None else [float(w) for w in sampling_weights]
        )
        self.generator_seed = generator_seed
        self.revisit_weight_fn = revisit_weight_fn
        self.history = bool(history)
        self.history_size = history_size

        self._rng = np.random.default_rng(generator_seed)
        self.revisit_counter = 0
        # The history: the records of the tasks drawn since the last reset, of which the newest
        # ``history_size`` are revisited (the window). ``_records`` holds the window and, while
        # marks are held, what their windows need; ``_offset`` is the position (tasks drawn since
        # the reset) of ``_records[0]``. Marks and revisit lists use those positions, which trims
        # of the front do not move.
        self._records: list[dict[str, Any]] = []
        self._offset = 0
        # one (rng state, history length, revisit counter, positions revisited since) per mark()
        self._marks: list[tuple[dict[str, Any], int, int, list[int]]] = []

    @property
    def selected_tasks(self) -> list[dict[str, Any]]:
        """The tasks revisits choose from, oldest first: ``{seed, first_meta_step, meta_steps,
        task_info}`` per task (the newest ``history_size`` drawn since the last reset)."""
        return self._records[self._window_start(self._length()) - self._offset :]

    def _length(self) -> int:
        """Tasks drawn since the last reset (the history's length were nothing dropped)."""
        return self._offset + len(self._records)

    def _window_start(self, length: int) -> int:
        """Position of the oldest record revisits choose from when ``length`` tasks were drawn."""
        return 0 if self.history_size is None else max(0, length - self.history_size)

    def _trim(self) -> None:
        """Drop the records no window needs any more: neither the current one nor a held mark's
        (a rollback restores a mark's window). Done in batches of ``history_size`` records, so
        the cost per task stays constant."""
        if self.history_size is None:
            return
        oldest = self._marks[0][1] if self._marks else self._length()
        drop = self._window_start(oldest) - self._offset
        if drop >= self.history_size:
            del self._records[:drop]
            self._offset += drop

    # ------------------------------------------------------------------ protocol
    def reset_history(self) -> None:
        """Forget past tasks (the RNG stream goes on)."""
        self._records = []
        self._offset = 0
        self.revisit_counter = 0
        self._marks = []

    def get_task(
        self, meta_step: int, seed: int | None = None
    ) -> tuple[gym.Env, dict[str, Any], int | None]:
        """Generate or retrieve a task: ``(env, info, origin_meta_step)``."""
        spec = self.sample_spec(meta_step, seed=seed)
        return spec.build_env(), spec.info, spec.origin_meta_step

    def sample_spec(self, meta_step: int, seed: int | None = None) -> TaskSpec:
        """Like :meth:`get_task`, but returns a picklable :class:`TaskSpec` instead of an env."""
        if self.tasks is not None:
            env, info = self.tasks[self._static_index(meta_step)]
            return TaskSpec(
                meta_step=meta_step, info=dict(info or {}), origin_meta_step=None, env=env
            )

        can_revisit = self.history and meta_step >= self.revisit_start and self._length() > 0
        if can_revisit and self._rng.random() < self.revisit_ratio:
            position = self._window_start(self._length()) + self._revisit_index()
            record = self._records[position - self._offset]
            record["meta_steps"].append(meta_step)
            if self._marks:
                self._marks[-1][3].append(position)
            return self._callable_spec(
                meta_step,
                record["seed"],
                record["task_info"],
                record["first_meta_step"],
                revisit=True,
            )

        if seed is None:
            seed = int(self._rng.integers(0, _MAX_TASK_SEED))
        info = self._task_info(seed)
        if self.history:
            self._records.append(
                {
                    "seed": seed,
                    "first_meta_step": meta_step,
                    "meta_steps": [meta_step],
                    "task_info": info,
                }
            )
            self._trim()
        return self._callable_spec(meta_step, seed, info, meta_step, revisit=False)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact same task stream (RNG, history, counters)."""
        return {
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "selected_tasks": copy.deepcopy(self.selected_tasks),
            "revisit_counter": self.revisit_counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        records = copy.deepcopy(state["selected_tasks"])
        start = self._window_start(len(records))
        self._records, self._offset = records[start:], start
        self.revisit_counter = int(state["revisit_counter"])
        self._marks = []

    def mark(self) -> int:
        """Remember the current state, so :meth:`rollback` can undo the draws made after it.

        Marks stack up (one per outer step drawn ahead); each is cheap whatever the history's
        length: the history only grows between a mark and a rollback (records a mark's window
        needs are kept while it is held), so its length and the records revisited since are
        enough to restore it.

        :return: the mark's position, for :meth:`rollback`.
        """
        self._marks.append(
            (
                copy.deepcopy(dict(self._rng.bit_generator.state)),
                self._length(),
                self.revisit_counter,
                [],
            )
        )
        return len(self._marks) - 1

    def rollback(self, position: int = 0) -> None:
        """Return to the state of mark ``position``, as if the draws since had not happened;
        that mark and the later ones are dropped."""
        rng_state, n_tasks, counter, _ = self._mark_at(position)
        self._undo_revisits(self._records, self._offset, position, n_tasks)
        self._rng.bit_generator.state = rng_state
        del self._records[n_tasks - self._offset :]
        self.revisit_counter = counter
        del self._marks[position:]
        self._trim()

    def state_dict_at(self, position: int) -> dict[str, Any]:
        """What :meth:`state_dict` returned at mark ``position``, without undoing anything (a
        checkpoint taken while later steps are drawn ahead)."""
        rng_state, n_tasks, counter, _ = self._mark_at(position)
        start = self._window_start(n_tasks)
        tasks = copy.deepcopy(self._records[start - self._offset : n_tasks - self._offset])
        self._undo_revisits(tasks, start, position, n_tasks)
        return {
            "rng": copy.deepcopy(rng_state),
            "selected_tasks": tasks,
            "revisit_counter": counter,
        }

    def _mark_at(self, position: int) -> tuple[dict[str, Any], int, int, list[int]]:
        if not 0 <= position < len(self._marks):
            raise RuntimeError(
                f"No mark {position} ({len(self._marks)} held): nothing to return to."
            )
        return self._marks[position]

    def _undo_revisits(
        self, tasks: list[dict[str, Any]], first: int, position: int, n_tasks: int
    ) -> None:
        """Take out of ``tasks`` (records from position ``first`` on: the history, or a copy of
        part of it) the revisits recorded since mark ``position`` of records before ``n_tasks``,
        newest first (records added since are dropped whole by the caller)."""
        for _, _, _, revisited in reversed(self._marks[position:]):
            for index in reversed(revisited):
                if first <= index < n_tasks:
                    tasks[index - first]["meta_steps"].pop()

    def release_marks(self) -> None:
        """Keep the draws made since the marks (forget the marks)."""
        self._marks = []
        self._trim()

    # ------------------------------------------------------------------ helpers
    def _static_index(self, meta_step: int) -> int:
        assert self.tasks is not None
        n = len(self.tasks)
        if self.sampling_method == "cyclic":
            return meta_step % n
        if self.sampling_method == "random":
            return int(self._rng.integers(0, n))
        weights = np.asarray(self.sampling_weights, dtype=float)
        return int(self._rng.choice(n, p=weights / weights.sum()))

    def _revisit_index(self) -> int:
        n = self._length() - self._window_start(self._length())
        self.revisit_counter += 1
        if self.sampling_method == "cyclic":
            return (self.revisit_counter - 1) % n
        if self.sampling_method == "random":
            return int(self._rng.integers(0, n))
        if self.revisit_weight_fn is None:
            raise ValueError(
                "sampling_method='weighted' revisits need `revisit_weight_fn(history) -> weights`; "
                "pass one, or use sampling_method='random'."
            )
        weights = np.asarray(list(self.revisit_weight_fn(self.selected_tasks)), dtype=float)
        if weights.shape != (n,):
            raise ValueError(
                f"revisit_weight_fn must return one weight per task: got {weights.size} for {n} tasks."
            )
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(
                "revisit_weight_fn must return finite, non-negative weights with a positive sum."
            )
        return int(self._rng.choice(n, p=weights / weights.sum()))

    def _task_info(self, seed: int) -> dict[str, Any]:
        assert self.task_callable is not None
        env, info = check_task_pair(
            self.task_callable(random_seed=seed, **self.task_callable_params), where="task_callable"
        )
        env.close()
        return info

    def _callable_spec(
        self, meta_step: int, seed: int, info: dict[str, Any], origin: int, revisit: bool
    ) -> TaskSpec:
        return TaskSpec(
            meta_step=meta_step,
            info=info,
            origin_meta_step=origin,
            random_seed=seed,
            task_callable=self.task_callable,
            task_callable_params=self.task_callable_params,
            revisit=revisit,
        )
