"""RemoteTaskSource: the task source as a named Ray actor, and the trainer's proxy to it."""

from __future__ import annotations

import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_reptile.ray_utils import unwrap
from distributed_reptile.tasks.source import TaskSource
from distributed_reptile.tasks.spec import TaskSpec


class RemoteTaskSource:
    """Proxy to the named task-source actor (same methods as :class:`TaskSource`).

    :meth:`prefetch` asks the actor for the tasks of the next few outer steps in one call, without
    waiting, so the draws overlap the inner loops and the actor is called once per few steps;
    :meth:`sample_specs` then serves them in order. :meth:`state_dict` (checkpoints) returns the
    state before the first unused step, and anything else that reads or changes the source first
    undoes the steps drawn ahead and not used (:meth:`settle`), so checkpoints, the history and
    the tasks drawn are those of a run that never drew ahead.
    """

    def __init__(self, actor: Any, name: str, can_prefetch: bool = False) -> None:
        self.actor = actor
        self.name = name
        self.can_prefetch = can_prefetch
        self._planned: list[tuple[list[int], list[int | None]]] = []
        self._ahead_ref: ray.ObjectRef | None = None
        self._drawn: list[list[TaskSpec]] | None = None
        self._used = 0

    def prefetch(self, steps: list[tuple[list[int], list[int | None]]]) -> None:
        """Draw ``steps`` (``(meta_steps, seeds)`` per outer step) ahead, unless the steps
        already drawn ahead and not used start with the first of them."""
        if not self.can_prefetch or not steps:
            return
        if self._next_is(*steps[0]):
            return
        self.settle()
        self._planned = [(list(m), list(s)) for m, s in steps]
        self._ahead_ref = self.actor.sample_steps.remote(self._planned)

    def sample_specs(self, meta_steps: list[int], seeds: list[int | None]) -> list[TaskSpec]:
        if self._next_is(meta_steps, seeds):
            drawn = self._drawn_steps()
            if self._used < len(drawn):
                specs = drawn[self._used]
                self._used += 1
                if self._used == len(self._planned):
                    self._forget_ahead()
                return specs
            # the actor's draw of this step failed (and was undone there): draw it again now,
            # so the failure surfaces here, as without drawing ahead
            self._forget_ahead()
        self.settle()
        return unwrap(lambda: ray.get(self.actor.sample_specs.remote(meta_steps, seeds)))

    def settle(self) -> None:
        """Undo the steps drawn ahead and not used."""
        if self._ahead_ref is None:
            return
        used, drawn = self._used, self._drawn_steps()
        self._forget_ahead()
        if used < len(drawn):
            unwrap(lambda: ray.get(self.actor.rollback.remote(used)))

    def _next_is(self, meta_steps: list[int], seeds: list[int | None]) -> bool:
        """Whether the next step drawn ahead and not used is this one."""
        return self._ahead_ref is not None and self._planned[self._used] == (
            list(meta_steps),
            list(seeds),
        )

    def _drawn_steps(self) -> list[list[TaskSpec]]:
        """The steps drawn ahead (fetched once); a failed fetch forgets them, so the proxy does
        not keep raising the same error."""
        if self._drawn is None:
            ref = self._ahead_ref
            assert ref is not None
            try:
                self._drawn = unwrap(lambda: ray.get(ref))
            except BaseException:
                self._forget_ahead()
                raise
        return self._drawn

    def _forget_ahead(self) -> None:
        self._planned, self._ahead_ref, self._drawn, self._used = [], None, None, 0

    def reset_history(self) -> None:
        self.settle()
        unwrap(lambda: ray.get(self.actor.reset_history.remote()))

    def history(self) -> list[dict[str, Any]] | None:
        self.settle()
        return unwrap(lambda: ray.get(self.actor.history.remote()))

    def state_dict(self) -> dict[str, Any]:
        """The state before the first step drawn ahead and not used; those steps stay drawn (a
        checkpoint every outer step would otherwise redraw them every step)."""
        position = None
        if self._ahead_ref is not None and self._used < len(self._drawn_steps()):
            position = self._used
        return unwrap(lambda: ray.get(self.actor.state_dict.remote(position)))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.settle()
        unwrap(lambda: ray.get(self.actor.load_state_dict.remote(state)))

    def close(self) -> None:
        self._forget_ahead()
        ray.kill(self.actor, no_restart=True)


def make_remote_task_source(
    generator_cls: type, generator_params: dict[str, Any]
) -> RemoteTaskSource:
    """Start the named task-source actor that owns sampling and the revisit history."""
    name = f"distributed_reptile_task_source_{uuid.uuid4().hex[:12]}"
    remote_cls: Any = ray.remote(TaskSource)
    # Pinned to the driver's node: an actor asking for no resources would otherwise land on any
    # node, and losing that node would lose the sampling state with it.
    here = NodeAffinitySchedulingStrategy(
        node_id=ray.get_runtime_context().get_node_id(), soft=False
    )
    actor = remote_cls.options(
        name=name, num_cpus=0, max_restarts=0, scheduling_strategy=here
    ).remote(generator_cls, generator_params, True)
    unwrap(lambda: ray.get(actor.ping.remote()))
    return RemoteTaskSource(
        actor, name, can_prefetch=unwrap(lambda: ray.get(actor.prefetchable.remote()))
    )
