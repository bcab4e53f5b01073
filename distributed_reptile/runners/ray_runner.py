"""RayRunner: inner loops on long-lived Ray actors (one InnerLearner each), surviving faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.reduction import TaskReducer
from distributed_reptile.runners.base import LearnerFactory
from distributed_reptile.runners.chunking import ChunkPlan, WorkerSpeeds
from distributed_reptile.runners.ray_actors import ActorPool
from distributed_reptile.runners.ray_batch import BatchScheduler
from distributed_reptile.runners.ray_transport import weights_argument
from distributed_reptile.settings import (
    check_node_reduction,
    check_task_retries,
    check_task_timeout,
    check_tasks_per_call,
)
from distributed_reptile.weights import NumpyWeights

#: ``node_reduction="auto"`` turns node reduction on when the workers sit on several nodes and
#: the partial sums it keeps from the driver, ``(calls - 1) x 8 bytes x parameters`` per outer
#: step, reach this: 32 MiB, about 27 ms at 10 Gb/s, well above what the one or two more actor
#: calls it costs at the end of a step take on a real cluster. Below it the bytes saved are worth
#: less than those calls (measured on the simulated cluster, ``docs/scaling.md``: at 10k
#: parameters and 8 calls per step, 0.5 MB saved for 2-23 ms more driver CPU and 20-90 ms more
#: per step).
NODE_REDUCTION_MIN_BYTES = 32 * 2**20


def wants_node_reduction(setting: bool | str, nodes: int, calls: int, params: int) -> bool:
    """Whether a batch of ``calls`` actor calls summing ``params`` parameters each, on workers
    that sit on ``nodes`` nodes, combines its partial sums on the nodes (``setting``: the
    ``node_reduction`` setting; see :data:`NODE_REDUCTION_MIN_BYTES` for ``"auto"``)."""
    if setting != "auto":
        return bool(setting)
    return nodes > 1 and (calls - 1) * 8 * params >= NODE_REDUCTION_MIN_BYTES


class RayRunner:
    """Runs inner loops on ``num_workers`` long-lived Ray actors, and survives their failures.

    Meta weights go into the object store once per outer step and each actor reads them
    zero-copy, or, up to ``INLINE_WEIGHTS_BYTES``, travel pickled inside the actor calls.
    Results are collected as they arrive (``ray.wait``) and handed over in task order, holding at
    most ``window`` results at once, so the fold into the meta weights does not depend on
    scheduling.

    Faults, each rerunning the same job (same spec, same task seed, from a fresh start), so a run
    that recovers ends with the meta weights of an undisturbed run, bit for bit:

    * a worker process that dies mid-task is restarted by Ray and its tasks rerun
      (``max_restarts`` / ``max_task_retries``); once Ray gives up, the worker is replaced by a
      new actor and the task counts as one failed attempt;
    * a task that raises is submitted again, up to ``task_retries`` times, then the run fails with
      :class:`TaskFailedError` naming the task and the original error (``ValueError`` and
      ``TypeError`` mean bad input and are raised at once);
    * a task that gives no result within ``task_timeout_s`` (counted from when its worker could
      start it) has its worker killed and replaced; it counts as one failed attempt, and the
      tasks queued behind it run again on the new worker without counting;
    * a node lost for good: at most every ``CLUSTER_CHECK_EVERY_S`` seconds the pool looks at the
      live nodes (``ray.nodes()``). A worker whose node is gone, or whose new actor has not
      started, and that the live nodes have no room for beside the workers placed on them, is
      dropped from the pool (one line on stderr and a ``"worker_dropped"`` retry event), and its
      tasks, queued or running, run on the workers left without counting as failed attempts; one
      the nodes have room for is left to Ray's restart. A dropped worker is started again when
      the cluster has free room for it (a node joins), back up to ``num_workers``
      (``"worker_added"``); one that does not start is dropped again. A worker started during
      the run that has not answered within ``worker_start_timeout_s`` is dropped too.

    The workers are an :class:`~distributed_reptile.runners.ray_actors.ActorPool`; each
    ``run_batch`` call is scheduled by a
    :class:`~distributed_reptile.runners.ray_batch.BatchScheduler`.

    :param learner_factory: builds the InnerLearner inside each actor.
    :param num_workers: number of actors.
    :param worker_resources: Ray resources of each actor (default ``{"num_cpus": 1}``).
    :param max_restarts: restarts of a dead actor by Ray (its tasks are retried, see
        ``max_task_retries``).
    :param max_task_retries: Ray's retries of a task whose actor died.
    :param pipeline_depth: tasks queued per actor at once (2 overlaps transfer with compute).
    :param task_retries: reruns of a task that failed (raised, lost its worker for good, or timed
        out) before the run fails.
    :param task_timeout_s: time limit of one task in seconds (``None``: no limit). Set it well above
        a task's normal duration: a task that hits it is rerun on a new worker.
    :param tasks_per_call: tasks sent to a worker in one actor call (consecutive tasks of the
        batch, run one after the other from the same weights). ``1`` (the default) balances the
        load best; more saves Ray's per-call cost (about a millisecond) when tasks take only a few
        milliseconds. ``"auto"``: the batch split evenly over the workers, one call each.
        ``"guided"``: calls that shrink as the batch runs out, scaled by each worker's measured
        speed (:mod:`~distributed_reptile.runners.chunking`). Results, and so the meta weights,
        do not depend on it.
    :param node_reduction: with a ``reducer`` (``combine = "sum"``): ``True`` keeps each call's
        partial sum on its node, combines them per node and then once more on one worker, so the
        driver receives one sum per outer step (see
        :class:`~distributed_reptile.runners.ray_batch.BatchScheduler`); ``False`` sends each
        call's sum to the driver; ``"auto"`` (default) decides per batch: on when the workers up
        sit on more than one node and the sums it keeps from the driver are large enough to be
        worth it (:func:`wants_node_reduction`). On, a step ends with one or two more actor
        calls (a few milliseconds plus the transfer of the sums between nodes), and a sum lost
        with its worker or node reruns the tasks it covered (``"sum_lost"``). The meta weights
        are the same either way, bit for bit.
    :param worker_start_timeout_s: how long the workers may stay pending at start before
        :class:`~distributed_reptile.ray_pending.WorkersNotStartedError` (``None``: no limit);
        what is pending is reported every 15 s meanwhile. During the run, how long a new worker
        may take to start before it is dropped, and how long a run whose workers were all
        dropped waits for room before the same error.
    """

    def __init__(
        self,
        learner_factory: LearnerFactory,
        num_workers: int,
        worker_resources: dict[str, Any] | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        pipeline_depth: int = 2,
        task_retries: int = 2,
        task_timeout_s: float | None = None,
        tasks_per_call: int | str = 1,
        worker_start_timeout_s: float | None = None,
        node_reduction: bool | str = "auto",
    ) -> None:
        self.num_workers = int(num_workers)
        self.tasks_per_call = check_tasks_per_call(tasks_per_call)
        self.node_reduction = check_node_reduction(node_reduction)
        self.pipeline_depth = max(1, int(pipeline_depth))
        self.task_retries = check_task_retries(task_retries)
        self.task_timeout_s = check_task_timeout(task_timeout_s)
        #: One record per rerun or worker change: ``kind`` (``"error"``, ``"timeout"``,
        #: ``"worker_lost"``, ``"result_lost"``, ``"worker_restarted"``, ``"sum_lost"`` (node
        #: reduction: the task's partial sum was lost after it ran); ``"worker_dropped"`` and
        #: ``"worker_added"`` when the pool shrinks or grows, with ``workers``, the workers up after,
        #: and no task), ``meta_step``, ``index``, ``attempt``, ``worker`` and ``reason``.
        self.retry_events: list[dict[str, Any]] = []
        #: Each worker's measured speed, which sizes ``tasks_per_call="guided"`` calls.
        self.speeds = WorkerSpeeds()
        self._pool = ActorPool(
            learner_factory,
            self.num_workers,
            worker_resources=worker_resources,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
            start_timeout_s=worker_start_timeout_s,
        )

    @property
    def actors(self) -> tuple[Any, ...]:
        """The actor handles, by worker index (empty once closed)."""
        return self._pool.actors

    @property
    def actor_options(self) -> dict[str, Any]:
        """Ray options of each actor (resources, ``max_restarts``, ``max_task_retries``)."""
        return self._pool.actor_options

    @property
    def worker_info(self) -> list[dict[str, Any]]:
        """What each worker said about itself (``pid``, ``hostname``, ``torch_threads``,
        ``node_id``, ``resources``), refreshed at the end of a batch after a restart."""
        return self._pool.worker_info

    @property
    def workers_active(self) -> int:
        """Workers up now: ``num_workers`` less those dropped (a lost node) or still starting."""
        return self._pool.workers_active

    @property
    def replacements(self) -> int:
        """Workers replaced by a new actor (after Ray gave up on one, or after a timeout)."""
        return self._pool.replacements

    def run_batch(
        self,
        jobs: list[TaskJob],
        meta_weights: NumpyWeights,
        reducer: TaskReducer | None = None,
    ) -> Iterator[AdaptedResult]:
        """See :meth:`Runner.run_batch <distributed_reptile.runners.base.Runner.run_batch>`. With
        ``reducer`` each actor call sends back one partial sum (int64, 8 bytes per parameter)
        instead of every task's adapted weights (4 bytes per parameter and task); with node
        reduction on, the calls keep their sums on their nodes and only the last result carries
        a sum, that of the whole batch."""
        weights_arg = weights_argument(meta_weights)
        keep_sums = reducer is not None and self.uses_node_reduction(
            len(jobs), sum(int(np.size(meta_weights[n])) for n in reducer.names)
        )
        batch = BatchScheduler(
            self._pool,
            jobs,
            weights_arg,
            chunk=self.chunk_plan(len(jobs)),
            pipeline_depth=self.pipeline_depth,
            task_retries=self.task_retries,
            task_timeout_s=self.task_timeout_s,
            retry_events=self.retry_events,
            reducer=reducer,
            node_reduction=keep_sums,
            float32_names=tuple(
                n
                for n in (reducer.names if reducer is not None else ())
                if np.asarray(meta_weights[n]).dtype == np.float32
            ),
        )
        try:
            yield from batch.results()
            self._pool.refresh_worker_info()
        finally:
            batch.drain()
            del batch, weights_arg

    def uses_node_reduction(self, batch_size: int, params: int) -> bool:
        """Whether a batch of ``batch_size`` tasks whose sums cover ``params`` parameters combines
        them on the nodes (see ``node_reduction``), with the workers up now."""
        nodes = {self._pool.node_of(i) for i in self._pool.ready_workers()} - {None}
        calls = self.chunk_plan(batch_size).calls()
        return wants_node_reduction(self.node_reduction, len(nodes), calls, params)

    def chunk_plan(self, batch_size: int) -> ChunkPlan:
        """The sizes of the actor calls of a batch of ``batch_size`` tasks."""
        return ChunkPlan(
            self.tasks_per_call, batch_size, self.num_workers, self.pipeline_depth, self.speeds
        )

    def chunk_size(self, batch_size: int) -> int:
        """The tasks of the first actor call of a batch of ``batch_size`` tasks (for ``"guided"``,
        the largest call when the workers are alike)."""
        return self.chunk_plan(batch_size).largest

    def replace_actor(self, idx: int) -> None:
        """Kill worker ``idx`` for good and start a new actor in its place."""
        self._pool.replace(idx)
        self.speeds.forget(idx)

    def close(self) -> None:
        self._pool.stop()
