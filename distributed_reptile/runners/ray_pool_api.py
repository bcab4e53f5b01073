"""What a batch of inner loops needs of the Ray workers (:class:`WorkerPool`, the interface it
uses of :class:`~distributed_reptile.runners.ray_actors.ActorPool`), and the record of a worker
that left the pool or came back (:class:`PoolChange`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import ray

from distributed_reptile.inner.learner import TaskJob
from distributed_reptile.reduction import TaskReducer
from distributed_reptile.runners.ray_transport import WeightsArg


@dataclass(frozen=True)
class PoolChange:
    """A worker left the pool or came back: ``kind`` is ``"worker_dropped"``, ``"worker_added"``
    or ``"worker_restarted"`` (Ray restarted it elsewhere after its node was lost); ``reason`` is
    one line for the user; ``workers`` is the number of workers up afterwards (in the pool and
    started)."""

    kind: str
    worker: int
    reason: str
    workers: int


class WorkerPool(Protocol):
    """What a batch needs of the workers: the interface it uses of
    :class:`~distributed_reptile.runners.ray_actors.ActorPool`."""

    num_workers: int
    #: What one worker asks of the cluster.
    bundle: dict[str, float]
    #: How long a worker started during the run may take to answer (``None``: no limit).
    start_timeout_s: float | None
    #: The nodes alive at the last :meth:`check_cluster` (None: not known).
    live_nodes: set[str] | None

    @property
    def starting(self) -> Mapping[int, tuple[ray.ObjectRef, float]]:
        """Workers whose new actor has not answered yet: index -> (its ``ready()`` call, since)."""
        ...

    def ready_workers(self) -> list[int]:
        """The workers that may be given tasks: in the pool and not starting."""
        ...

    def submit(
        self,
        idx: int,
        jobs: list[TaskJob],
        weights_arg: WeightsArg,
        reducer: TaskReducer | None = None,
        keep_sum: bool = False,
        fold: tuple[ray.ObjectRef, ...] = (),
    ) -> ray.ObjectRef:
        """Queue ``jobs`` (one actor call) on worker ``idx``; with ``reducer``, the call returns
        one partial sum of its tasks, or keeps it on its node (``keep_sum``, adding the sums
        ``fold`` to it; see :meth:`LearnerActor.run`)."""
        ...

    def combine(
        self,
        idx: int,
        refs: list[ray.ObjectRef],
        keep: bool,
        finish: tuple[str, ...] | None = None,
    ) -> ray.ObjectRef:
        """Queue the sum of the kept partial sums ``refs`` on worker ``idx``, finished into means
        with ``finish`` (see :meth:`LearnerActor.combine`)."""
        ...

    def node_of(self, idx: int) -> str | None:
        """The node worker ``idx`` runs on, as far as known."""
        ...

    def replace(self, idx: int) -> None:
        """Kill worker ``idx`` for good and start a new actor in its place."""
        ...

    def info_ready(self, idx: int, ref: ray.ObjectRef) -> PoolChange | None:
        """Worker ``idx``'s ``ready()`` call ``ref`` has answered; a worker back in the pool is
        returned as a change."""
        ...

    def check_restarted(self, idx: int, pid: int | None, node_id: str | None) -> str | None:
        """Why worker ``idx`` now runs in process ``pid`` (Ray restarted it), or None."""
        ...

    def seconds_to_check(self) -> float:
        """Seconds until :meth:`check_cluster` is due (0 or less: due now)."""
        ...

    def check_cluster(self) -> list[PoolChange]:
        """Fit the pool to the cluster's live nodes; the workers dropped, one change each."""
        ...
