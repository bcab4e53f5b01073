"""RemoteTaskSource: the task source as a named Ray actor, and the trainer's proxy to it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_reptile.errors import TaskSourceLostError
from distributed_reptile.ray_utils import unwrap
from distributed_reptile.tasks.source import TaskSource
from distributed_reptile.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
Steps = list[tuple[list[int], list[int | None]]]

#: Rebuilds of a lost task source in a row (no call answered in between) before the run fails.
MAX_REBUILDS_IN_A_ROW = 3
#: Outer steps drawn one at a time after which a draw also fetches the source's state, the new
#: point to rebuild from (a draw ahead always does, once per call).
REBASE_AFTER = 8


class RemoteTaskSource:
    """Proxy to the named task-source actor (same methods as :class:`TaskSource`).

    :meth:`prefetch` asks the actor for the tasks of the next few outer steps in one call, without
    waiting, so the draws overlap the inner loops and the actor is called once per few steps;
    :meth:`sample_specs` then serves them in order. :meth:`state_dict` (checkpoints) returns the
    state before the first unused step, and anything else that reads or changes the source first
    undoes the steps drawn ahead and not used (:meth:`settle`), so checkpoints, the history and
    the tasks drawn are those of a run that never drew ahead.

    A lost actor (killed, out of memory: Ray's ``RayActorError``) is rebuilt with nothing lost:
    the proxy keeps the source's state as of an earlier draw (fetched in the same call as a draw
    ahead, or every :data:`REBASE_AFTER` draws) and what it did since (the outer steps it used,
    history resets). A new actor loads that state and redoes them (the draws are deterministic),
    the steps that were drawn ahead and not used are drawn again, and the call goes on. A source
    whose generator has no ``state_dict()`` / ``load_state_dict()`` cannot be rebuilt, and a
    source lost more than :data:`MAX_REBUILDS_IN_A_ROW` times in a row is given up; both raise
    :class:`~distributed_reptile.errors.TaskSourceLostError`.
    """

    def __init__(
        self,
        actor: Any,
        name: str,
        can_prefetch: bool = False,
        *,
        start: Callable[[str], tuple[Any, str]] | None = None,
        state: dict[str, Any] | None = None,
        generator_name: str = "the task generator",
    ) -> None:
        self.actor = actor
        self.name = name
        self.can_prefetch = can_prefetch
        self._planned: Steps = []
        self._ahead_ref: ray.ObjectRef | None = None
        self._drawn: list[list[TaskSpec]] | None = None
        self._used = 0
        # rebuilding: a new actor (named like the lost one when the name is free) and its name
        self._start = start
        self.restorable = start is not None and state is not None
        self.generator_name = generator_name
        self._base = state  # the source's state, as of the operations in self._since
        self._since: list[tuple[Any, ...]] = []
        self._base_known = self.restorable
        self._redraw: Steps = []  # steps drawn ahead and not used when the actor was lost
        self._lost_actor: Any = None
        self._given_up: str | None = None  # why a lost actor was not rebuilt
        self._in_a_row = 0
        #: Times the actor was lost and rebuilt.
        self.rebuilds = 0

    # ------------------------------------------------------------------ the source's methods
    def prefetch(self, steps: Steps) -> None:
        """Draw ``steps`` (``(meta_steps, seeds)`` per outer step) ahead, unless the steps
        already drawn ahead and not used start with the first of them."""
        if not self.can_prefetch or not steps:
            return
        self._surviving("drawing ahead", lambda: self._prefetch(steps))

    def sample_specs(self, meta_steps: list[int], seeds: list[int | None]) -> list[TaskSpec]:
        what = f"drawing the tasks of {_span(meta_steps)}"
        return self._surviving(what, lambda: self._sample_specs(meta_steps, seeds))

    def settle(self) -> None:
        """Undo the steps drawn ahead and not used."""
        self._surviving("undoing the steps drawn ahead", self._settle)

    def reset_history(self) -> None:
        def reset() -> None:
            self._settle()
            self._get(self.actor.reset_history.remote())
            self._since.append(("reset_history",))

        self._surviving("resetting the task history", reset)

    def history(self) -> list[dict[str, Any]] | None:
        def read() -> list[dict[str, Any]] | None:
            self._settle()
            return self._get(self.actor.history.remote())

        return self._surviving("reading the task history", read)

    def state_dict(self) -> dict[str, Any]:
        """The state before the first step drawn ahead and not used; those steps stay drawn (a
        checkpoint every outer step would otherwise redraw them every step)."""

        def read() -> dict[str, Any]:
            position = None
            if self._ahead_ref is not None and self._used < len(self._drawn_steps()):
                position = self._used
            return self._get(self.actor.state_dict.remote(position))

        return self._surviving("reading the task source's state", read)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def load() -> None:
            self._settle()
            if self.restorable:
                self._rebase(self._get(self.actor.restore.remote(state, [])))
            else:
                self._get(self.actor.load_state_dict.remote(state))

        self._surviving("loading the task source's state", load)

    def close(self) -> None:
        self._forget_ahead()
        ray.kill(self.actor, no_restart=True)

    # ------------------------------------------------------------------ drawing ahead
    def _prefetch(self, steps: Steps) -> None:
        if self._next_is(*steps[0]):
            return
        self._settle()
        self._ask_ahead([(list(m), list(s)) for m, s in steps])

    def _ask_ahead(self, steps: Steps) -> None:
        self._planned = steps
        self._ahead_ref = self.actor.sample_steps_with_state.remote(steps, self.restorable)

    def _sample_specs(self, meta_steps: list[int], seeds: list[int | None]) -> list[TaskSpec]:
        if self._next_is(meta_steps, seeds):
            drawn = self._drawn_steps()
            if self._used < len(drawn):
                specs = drawn[self._used]
                self._used += 1
                self._since.append(("sample", list(meta_steps), list(seeds)))
                if self._used == len(self._planned):
                    self._forget_ahead()
                return specs
            # the actor's draw of this step failed (and was undone there): draw it again now,
            # so the failure surfaces here, as without drawing ahead
            self._forget_ahead()
        self._settle()
        with_state = self.restorable and (not self._base_known or len(self._since) >= REBASE_AFTER)
        ref = self.actor.sample_specs_with_state.remote(meta_steps, seeds, with_state)
        try:
            state, specs = self._get(ref)
        except RayActorError:
            raise
        except BaseException:
            self._base_known = False  # a failed draw may have drawn part of the step
            raise
        if state is not None:
            self._rebase(state)
        self._since.append(("sample", list(meta_steps), list(seeds)))
        return specs

    def _settle(self) -> None:
        if self._ahead_ref is None:
            return
        used, drawn = self._used, self._drawn_steps()
        self._forget_ahead()
        if used < len(drawn):
            self._get(self.actor.rollback.remote(used))

    def _next_is(self, meta_steps: list[int], seeds: list[int | None]) -> bool:
        """Whether the next step drawn ahead and not used is this one."""
        return self._ahead_ref is not None and self._planned[self._used] == (
            list(meta_steps),
            list(seeds),
        )

    def _drawn_steps(self) -> list[list[TaskSpec]]:
        """The steps drawn ahead (fetched once); a failed fetch forgets them, so the proxy does
        not keep raising the same error (a lost actor draws them again once rebuilt)."""
        if self._drawn is None:
            ref = self._ahead_ref
            assert ref is not None
            try:
                state, self._drawn = self._get(ref)
            except RayActorError:
                raise
            except BaseException:
                self._forget_ahead()
                self._base_known = False  # the call may have failed halfway through its draws
                raise
            if state is not None:  # the state before them: nothing was done since the call
                self._rebase(state)
        return self._drawn

    def _forget_ahead(self) -> None:
        self._planned, self._ahead_ref, self._drawn, self._used = [], None, None, 0

    # ------------------------------------------------------------------ surviving a lost actor
    def _get(self, ref: ray.ObjectRef) -> Any:
        return unwrap(lambda: ray.get(ref))

    def _rebase(self, state: dict[str, Any]) -> None:
        self._base, self._since, self._base_known = state, [], True

    def _surviving(self, what: str, call: Callable[[], _T]) -> _T:
        """``call()``; when the actor is lost, rebuild it and call again (a bounded number of
        times in a row)."""
        while True:
            if self._given_up is not None:
                raise TaskSourceLostError(self._given_up)
            try:
                if self._lost_actor is not None:
                    self._rebuild()
                out = call()
            except RayActorError as exc:
                self._lose(exc, what)
                continue
            self._in_a_row = 0
            return out

    def _lose(self, exc: RayActorError, what: str) -> None:
        """Note that the actor was lost while ``what``, or raise if it cannot be rebuilt."""
        if self._ahead_ref is not None:  # (else: kept from a rebuild that was lost too)
            self._redraw = self._planned[self._used :]
        self._forget_ahead()
        self._lost_actor = self.actor
        self._in_a_row += 1
        lost = (
            f"The task source (Ray actor {self.name}) was lost while {what}, after draw "
            f"{self._draws()} ({type(exc).__name__})"
        )
        if not self.restorable:
            self._given_up = (
                f"{lost}, and cannot be rebuilt: {self.generator_name} has no state_dict() and "
                "load_state_dict(), so its sampling state (random generator, task history) died "
                "with the actor. Give the generator those two methods so that a lost task source "
                "can be rebuilt exactly."
            )
        elif not self._base_known:
            self._given_up = (
                f"{lost}, and cannot be rebuilt: a draw had failed before, so its state is unknown."
            )
        elif self._in_a_row > MAX_REBUILDS_IN_A_ROW:
            n = MAX_REBUILDS_IN_A_ROW
            self._given_up = (
                f"{lost}, {self._in_a_row} times in a row: given up after {n} "
                f"rebuild{'s' if n != 1 else ''} lost again before answering."
            )
        if self._given_up is not None:
            raise TaskSourceLostError(self._given_up) from exc
        logger.warning(
            "%s; rebuilding it from its state after draw %d, redoing %s%s "
            "(rebuild %d in a row, at most %d).",
            lost,
            self._base_draws(),
            _redoing(self._since),
            _redrawing(len(self._redraw)),
            self._in_a_row,
            MAX_REBUILDS_IN_A_ROW,
        )

    def _rebuild(self) -> None:
        """Replace the lost actor by a new one in the state the lost one had (then draw again
        the steps it had drawn ahead and not used)."""
        assert self._start is not None and self._base is not None
        try:
            ray.kill(self._lost_actor, no_restart=True)  # one that is only unavailable, too
        except Exception:  # already gone
            pass
        self.actor, self.name = self._start(self.name)
        self._rebase(self._get(self.actor.restore.remote(self._base, self._since)))
        self._lost_actor = None
        self.rebuilds += 1
        redraw, self._redraw = self._redraw, []
        if redraw:
            self._ask_ahead(redraw)

    def _base_draws(self) -> int:
        return int((self._base or {}).get("num_sampled", 0))

    def _draws(self) -> int:
        """Draws made and used so far (as of the last step used)."""
        if not self._base_known:
            return self._base_draws()
        return self._base_draws() + sum(len(op[1]) for op in self._since if op[0] == "sample")


def _span(meta_steps: list[int]) -> str:
    if len(meta_steps) == 1:
        return f"meta step {meta_steps[0]}"
    return f"meta steps {meta_steps[0]}-{meta_steps[-1]}" if meta_steps else "no meta step"


def _redoing(done: list[tuple[Any, ...]]) -> str:
    steps = sum(op[0] == "sample" for op in done)
    resets = len(done) - steps
    said = [f"{steps} outer step{'s' if steps != 1 else ''} drawn since"]
    if resets:
        said.append(f"{resets} history reset{'s' if resets != 1 else ''}")
    return " and ".join(said)


def _redrawing(n: int) -> str:
    if not n:
        return ""
    return f", then drawing again the {n} outer step{'s' if n > 1 else ''} it had drawn ahead"


def _start_actor(
    generator_cls: type, generator_params: dict[str, Any], name: str
) -> tuple[Any, str]:
    """A new task-source actor named ``name`` (a fresh name if that one is taken)."""
    remote_cls: Any = ray.remote(TaskSource)
    # Pinned to the driver's node: an actor asking for no resources would otherwise land on any
    # node, and losing that node would lose the sampling state with it.
    here = NodeAffinitySchedulingStrategy(
        node_id=ray.get_runtime_context().get_node_id(), soft=False
    )

    def start(actor_name: str) -> Any:
        return remote_cls.options(
            name=actor_name, num_cpus=0, max_restarts=0, scheduling_strategy=here
        ).remote(generator_cls, generator_params, True)

    try:
        return start(name), name
    except ValueError:  # the name is still held (Ray has not released a lost actor's name yet)
        fresh = _fresh_name()
        return start(fresh), fresh


def _fresh_name() -> str:
    return f"distributed_reptile_task_source_{uuid.uuid4().hex[:12]}"


def make_remote_task_source(
    generator_cls: type, generator_params: dict[str, Any]
) -> RemoteTaskSource:
    """Start the named task-source actor that owns sampling and the revisit history."""
    actor, name = _start_actor(generator_cls, generator_params, _fresh_name())
    info = unwrap(lambda: ray.get(actor.startup.remote()))

    def start(actor_name: str) -> tuple[Any, str]:
        return _start_actor(generator_cls, generator_params, actor_name)

    return RemoteTaskSource(
        actor,
        name,
        can_prefetch=info["prefetch"],
        start=start if info["restorable"] else None,
        state=info["state"],
        generator_name=getattr(generator_cls, "__name__", str(generator_cls)),
    )
