"""The Ray workers: the actor body that holds one InnerLearner, and the pool of those actors."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from distributed_reptile.execution.resources import worker_bundle, workers_that_fit
from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.ray_pending import WorkersNotStartedError, wait_ready
from distributed_reptile.reduction import FixedSum, TaskReducer
from distributed_reptile.runners.base import LearnerFactory
from distributed_reptile.runners.ray_pool_api import PoolChange
from distributed_reptile.runners.ray_sums import CombineReply, StoredSum, gather
from distributed_reptile.runners.ray_transport import WeightsArg, unpack_weights

#: How long the end of a batch waits for a worker that Ray restarted to say who it is.
_INFO_TIMEOUT_S = 30.0
#: Seconds between two looks at the cluster (its live nodes and their resources), at most.
CLUSTER_CHECK_EVERY_S = 5.0


class LearnerActor:
    """Plain-Python actor body: holds one InnerLearner (and its reused SB3 model)."""

    def __init__(self, learner_factory: LearnerFactory) -> None:
        self.learner = learner_factory()

    def ready(self) -> dict[str, Any]:
        import os
        import socket

        import torch as th

        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "torch_threads": th.get_num_threads(),
            "node_id": ctx.get_node_id(),
            "resources": ctx.get_assigned_resources(),
        }

    def run(
        self,
        jobs: list[TaskJob],
        weights_arg: WeightsArg,
        reducer: TaskReducer | None = None,
        keep_sum: bool = False,
        fold: tuple[ray.ObjectRef, ...] = (),
    ) -> list[AdaptedResult]:
        """Run the jobs of one call (one, or ``tasks_per_call``) in order, from the same weights.

        ``weights_arg`` is the pickled weights (small networks) or a one-item list holding their
        object-store reference. A job that raises marks the exception with its index
        (``_job_index``), so the driver knows which job failed and reruns the others without
        counting them. With ``reducer``, each finished task is folded at once into one partial
        sum for the call (its weights are dropped, non-finite ones are named and left out), and
        the call sends back that sum, on its first result, with every task's statistics.

        With ``keep_sum`` (node reduction) the sum stays in this node's object store: the first
        result carries a :class:`StoredSum` (``sum_ref``) instead of the sum (``partial``). The
        partial sums ``fold`` (kept by earlier calls, usually on this node) are added to it, so
        that a node holds about one sum per worker rather than one per call; those that cannot be
        read are named in ``StoredSum.lost``.
        """
        t0 = time.perf_counter()
        weights = unpack_weights(weights_arg)
        fetch = time.perf_counter() - t0
        results: list[AdaptedResult] = []
        partial = FixedSum() if reducer is not None else None
        for job in jobs:
            try:
                result = self.learner.run(job, weights)
                if reducer is not None and partial is not None:
                    t_fold = time.perf_counter()
                    reducer.reduce_one(partial, result, weights)
                    result.timings["fold"] = time.perf_counter() - t_fold
            except BaseException as exc:
                # The reused model may hold whatever state the failure left: a rerun rebuilds it.
                self.learner.model = None
                try:
                    exc._job_index = job.index  # type: ignore[attr-defined]
                except AttributeError:  # an exception class without __dict__
                    pass
                raise
            result.timings["weight_fetch"] = fetch if not results else 0.0
            results.append(result)
        if results and keep_sum and partial is not None:
            t_fold = time.perf_counter()
            lost = gather(list(fold), partial)
            ref = ray.put(partial)
            results[0].timings["fold"] = results[0].timings.get("fold", 0.0) + (
                time.perf_counter() - t_fold
            )
            node = ray.get_runtime_context().get_node_id()
            results[0].sum_ref = StoredSum(ref, node, tuple(i for i, _ in lost))
        elif results:
            results[0].partial = partial
        return results

    def combine(
        self, refs: list[ray.ObjectRef], keep: bool, finish: tuple[str, ...] | None = None
    ) -> CombineReply:
        """The sum of the partial sums behind ``refs`` (references kept by other calls, nested in
        a list so that Ray passes them unread): kept in this node's object store (``keep``: a
        :class:`StoredSum`) or sent back. Sums that cannot be read are left out and named.

        ``finish`` (the step's last combine, sent back): when every sum was read, the means
        replace the sums (:meth:`FixedSum.finish`, float32 for the parameters named)."""
        total = FixedSum()
        lost = gather(refs, total)
        if finish is not None and not keep and not lost:
            total.finish(finish)
        out: StoredSum | FixedSum = total
        if keep:
            out = StoredSum(ray.put(total), ray.get_runtime_context().get_node_id())
        return CombineReply(out, tuple(lost))


class ActorPool:
    """The ``num_workers`` :class:`LearnerActor` workers: starts them, replaces one, stops them,
    and keeps what each said about itself (``worker_info``: pid, hostname, node, resources).

    A replacement actor answers ``ready()`` in its own time: until it does it is listed in
    :attr:`starting`, and its ``worker_info`` entry is updated when the answer is handed to
    :meth:`info_ready`.

    The pool shrinks when a node is lost for good and grows back when the cluster has room again
    (:meth:`check_cluster`): a worker whose node is dead, or whose new actor has not started, is
    dropped when the live nodes cannot hold it beside the workers placed on them (or when it has
    not started within ``start_timeout_s``), and a dropped worker is started again once the
    cluster has free room for it. Tasks go only to :meth:`ready_workers`.

    :param learner_factory: builds the InnerLearner inside each actor.
    :param num_workers: number of actors.
    :param worker_resources: Ray resources of each actor (default ``{"num_cpus": 1}``).
    :param max_restarts: restarts of a dead actor by Ray.
    :param max_task_retries: Ray's retries of a task whose actor died.
    :param start_timeout_s: how long the workers may stay pending at start (then
        :class:`WorkersNotStartedError`), and a worker started during the run before it is
        dropped (``None``: no limit).
    :raises RuntimeError: the workers could not start (their code is not importable there).
    """

    def __init__(
        self,
        learner_factory: LearnerFactory,
        num_workers: int,
        worker_resources: dict[str, Any] | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        start_timeout_s: float | None = None,
    ) -> None:
        self.num_workers = int(num_workers)
        resources = dict(worker_resources or {})
        resources.setdefault("num_cpus", 1)
        self.actor_options = _actor_options(resources)
        self.actor_options.update(
            {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
        )
        #: What one worker asks of the cluster (``{"CPU": 1.0}``...).
        self.bundle = worker_bundle(resources)
        self.start_timeout_s = start_timeout_s
        self._actor_cls = ray.remote(LearnerActor)
        self._learner_factory = learner_factory
        #: Workers replaced by a new actor (after Ray gave up on one, or after a timeout).
        self.replacements = 0
        #: Workers out of the pool (their node was lost and the cluster has no room for them).
        self.dropped: set[int] = set()
        # ready() of a replacement actor, pending until it answers (its worker_info then updates).
        self._starting: dict[int, tuple[ray.ObjectRef, float]] = {}
        self._stale: set[int] = set()
        self._returning: set[int] = set()  # dropped workers started again, not answered yet
        self._moved: dict[int, str] = {}  # workers whose node died, left to Ray: idx -> that node
        self._next_check = 0.0
        #: The nodes alive at the last look at the cluster (None: not looked yet, or no answer).
        self.live_nodes: set[str] | None = None
        self._actors = [self._new_actor() for _ in range(self.num_workers)]
        try:
            self.worker_info: list[dict[str, Any]] = wait_ready(
                [a.ready.remote() for a in self._actors], self.bundle, start_timeout_s
            )
        except WorkersNotStartedError:
            self.stop()
            raise
        except RayActorError as err:
            self.stop()
            raise RuntimeError(
                "The Ray inner-learner workers could not start. Their code (your task callables, "
                "generator and algorithm classes) must be importable on every worker: install your "
                "package on the nodes or ship it with ray job submit --working-dir / runtime_env. "
                f"Ray said: {err}"
            ) from err

    def _new_actor(self) -> Any:
        return self._actor_cls.options(**self.actor_options).remote(self._learner_factory)

    @property
    def actors(self) -> tuple[Any, ...]:
        """The actor handles, by worker index (empty once stopped)."""
        return tuple(self._actors)

    @property
    def starting(self) -> Mapping[int, tuple[ray.ObjectRef, float]]:
        """Workers whose new actor has not answered yet: index -> (its ``ready()`` call, when it
        was started, ``time.perf_counter()``). Read-only; kept up to date."""
        return MappingProxyType(self._starting)

    @property
    def workers_active(self) -> int:
        """Workers up: in the pool and not starting (:meth:`ready_workers`)."""
        return len(self.ready_workers())

    def ready_workers(self) -> list[int]:
        """The workers that may be given tasks: in the pool and not starting."""
        return [
            i for i in range(self.num_workers) if i not in self.dropped and i not in self._starting
        ]

    def submit(
        self,
        idx: int,
        jobs: list[TaskJob],
        weights_arg: WeightsArg,
        reducer: TaskReducer | None = None,
        keep_sum: bool = False,
        fold: tuple[ray.ObjectRef, ...] = (),
    ) -> ray.ObjectRef:
        """Queue ``jobs`` (one actor call) on worker ``idx``; the call's result reference (see
        :meth:`LearnerActor.run` for ``keep_sum`` and ``fold``)."""
        actor = self._actors[idx]
        if keep_sum:
            ref: ray.ObjectRef = actor.run.remote(jobs, weights_arg, reducer, True, fold)
        else:
            ref = actor.run.remote(jobs, weights_arg, reducer)
        return ref

    def combine(
        self,
        idx: int,
        refs: list[ray.ObjectRef],
        keep: bool,
        finish: tuple[str, ...] | None = None,
    ) -> ray.ObjectRef:
        """Queue :meth:`LearnerActor.combine` of ``refs`` on worker ``idx``; its reference."""
        ref: ray.ObjectRef = self._actors[idx].combine.remote(list(refs), keep, finish)
        return ref

    def node_of(self, idx: int) -> str | None:
        """The node worker ``idx`` last said it runs on (None: not known)."""
        node = self.worker_info[idx].get("node_id")
        return None if node is None else str(node)

    def replace(self, idx: int) -> None:
        """Kill worker ``idx`` for good and start a new actor in its place (a worker coming back
        to the pool that is replaced before it answered still comes back as ``worker_added``)."""
        returning = idx in self._returning
        self._kill(idx)
        self.dropped.discard(idx)
        self._start(idx)
        if returning:
            self._returning.add(idx)
        self.replacements += 1

    def _kill(self, idx: int) -> None:
        try:
            ray.kill(self._actors[idx], no_restart=True)
        except Exception:  # already gone
            pass
        self._starting.pop(idx, None)
        self._moved.pop(idx, None)
        self._returning.discard(idx)
        self._stale.discard(idx)

    def _start(self, idx: int) -> None:
        self._actors[idx] = self._new_actor()
        self._starting[idx] = (self._actors[idx].ready.remote(), time.perf_counter())

    def info_ready(self, idx: int, ref: ray.ObjectRef) -> PoolChange | None:
        """Take the answer ``ref`` of worker ``idx``'s ``ready()`` call as its ``worker_info``
        (an actor that failed to start keeps its old entry, with ``pid`` None and the error).
        A worker that came back to the pool, or that Ray restarted after its node was lost, is
        returned as a :class:`PoolChange`."""
        entry = self._starting.get(idx)
        if entry is None or entry[0] != ref:
            return None  # an earlier actor's answer: that actor was replaced or dropped since
        del self._starting[idx]
        back, lost_node = idx in self._returning, self._moved.pop(idx, None)
        self._returning.discard(idx)
        try:
            self.worker_info[idx] = ray.get(ref)
        except RayError as err:
            # (after a lost node: Ray gave up on it; its next call fails and it is replaced)
            info = self.worker_info[idx]
            self.worker_info[idx] = {**info, "pid": None, "error": str(err)}
            if lost_node is not None:
                self.worker_info[idx]["node_id"] = None
            return None
        node = str(self.worker_info[idx].get("node_id", "?"))[:8]
        if back:
            n = self.workers_active
            line = f"Ray worker {idx} is back, on node {node}: {n} of {self.num_workers} workers."
            return PoolChange("worker_added", idx, line, n)
        if lost_node is not None:
            line = f"Ray worker {idx} was restarted by Ray on node {node} "
            line += f"(its node {lost_node[:8]} was lost)."
            return PoolChange("worker_restarted", idx, line, self.workers_active)
        return None

    def check_restarted(self, idx: int, pid: int | None, node_id: str | None = None) -> str | None:
        """Whether a result that worker ``idx`` sent from process ``pid`` (on ``node_id``) shows
        that Ray restarted the worker: if so, take the new pid and node, refresh its
        ``worker_info`` at the end of the batch, and say what happened; else None."""
        old = self.worker_info[idx].get("pid")
        if pid is None or pid == old:
            return None
        lost_node = self._moved.pop(idx, None)
        if lost_node is not None:  # a result from the new process: the worker is back
            self._starting.pop(idx, None)
        elif idx in self._starting:
            return None
        self._stale.add(idx)
        self.worker_info[idx] = {**self.worker_info[idx], "pid": pid}
        if node_id is not None:
            self.worker_info[idx]["node_id"] = node_id
        where = f" after its node {lost_node[:8]} was lost" if lost_node is not None else ""
        return f"worker {idx} was restarted by Ray (pid {old} -> {pid}){where}"

    # ------------------------------------------------------------------ nodes lost and found
    def seconds_to_check(self) -> float:
        """Seconds until :meth:`check_cluster` is due (0 or less: due now)."""
        return self._next_check - time.perf_counter()

    def check_cluster(self) -> list[PoolChange]:
        """Look at the cluster (``ray.nodes()``: one call) and fit the pool to it.

        Workers placed on live nodes stay. The others (on a node that died, or whose new actor
        has not answered) are kept, lowest index first, while the live nodes' resources hold them
        beside the placed ones; a kept worker whose node died is left to Ray's restart and asked
        who it is. The rest are dropped (killed for good; the batch reruns their tasks), as is a
        new actor that has not started within ``start_timeout_s``. A dropped worker is started
        again when the cluster has free room for it (one more call, only while the pool is short).

        :return: the workers dropped, one :class:`PoolChange` each (those that come back are
            reported by :meth:`info_ready` when they answer).
        """
        now = time.perf_counter()
        self._next_check = now + CLUSTER_CHECK_EVERY_S
        try:
            nodes = ray.nodes()
        except Exception:  # the GCS did not answer this time: look again at the next check
            self.live_nodes = None
            return []
        totals: dict[str, float] = {}
        alive: set[str] = set()
        for node in nodes:
            if node.get("Alive"):
                alive.add(node["NodeID"])
                for key, value in node.get("Resources", {}).items():
                    totals[key] = totals.get(key, 0.0) + float(value)
        self.live_nodes = alive
        placed, waiting, lost = 0, [], {}
        for idx in range(self.num_workers):
            node = self.worker_info[idx].get("node_id")
            if idx in self.dropped:
                continue
            if idx in self._starting:
                waiting.append(idx)
            elif node is None or node in alive:
                placed += 1
            else:
                waiting.append(idx)
                lost[idx] = str(node)
        room = workers_that_fit(self.bundle, totals) - placed
        changes = []
        for n, idx in enumerate(waiting):
            since = self._starting[idx][1] if idx in self._starting else now
            if n >= room:
                why = (
                    f"its node {lost[idx][:8]} was lost" if idx in lost else "its new actor"
                ) + " and the live nodes have no room for it"
                changes.append(self._drop(idx, why, totals))
            elif idx in lost:  # Ray restarts it where it fits: ask it who it is then
                self._moved[idx] = lost[idx]
                self._starting[idx] = (self._actors[idx].ready.remote(), now)
            elif self.start_timeout_s is not None and now - since >= self.start_timeout_s:
                why = f"it did not start within worker_start_timeout_s={self.start_timeout_s:g}"
                changes.append(self._drop(idx, why, totals))
        self._grow(room - len(waiting))
        return changes

    def _drop(self, idx: int, why: str, totals: Mapping[str, float]) -> PoolChange:
        self._kill(idx)
        self.dropped.add(idx)
        n = self.workers_active
        available = ray.available_resources()
        has = _describe({k: float(totals.get(k, 0.0)) for k in self.bundle})
        free = _describe({k: float(available.get(k, 0.0)) for k in self.bundle})
        line = (
            f"Ray worker {idx} dropped: {why}. Each worker asks for {_describe(self.bundle)}; the "
            f"live nodes have {has} in all, {free} free. Running on with {n} of "
            f"{self.num_workers} workers (its tasks run on the others); the pool grows back when "
            "the cluster has room again."
        )
        return PoolChange("worker_dropped", idx, line, n)

    def _grow(self, room: int) -> None:
        """Start dropped workers again, as many as the cluster has room for now."""
        if not self.dropped or room <= 0:
            return
        free = workers_that_fit(self.bundle, ray.available_resources()) - len(self._starting)
        for idx in sorted(self.dropped)[: min(room, free)]:
            self.dropped.discard(idx)
            self._returning.add(idx)
            self._start(idx)

    # ------------------------------------------------------------------ end of a batch, end
    def refresh_worker_info(self) -> None:
        """Update ``worker_info`` of workers that Ray restarted during the batch.

        Called at the end of a batch, when the workers are idle. A new actor still starting
        updates its entry when it answers (during a later batch).
        """
        asked = {
            self._actors[idx].ready.remote(): idx
            for idx in sorted(self._stale)
            if idx not in self._starting and idx not in self.dropped
        }
        self._stale.clear()
        if not asked:
            return
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=_INFO_TIMEOUT_S)
        for ref in ready:
            try:
                self.worker_info[asked[ref]] = ray.get(ref)
            except RayError:  # died again: the next result or batch says more
                pass

    def stop(self) -> None:
        """Kill every actor (for good); the pool is empty afterwards."""
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        self._starting.clear()


def _describe(resources: Mapping[str, float]) -> str:
    """``"2 CPU, 1 GPU"``: the resources a worker can ask for (no memory or node labels)."""
    shown = {
        k: v for k, v in resources.items() if not k.startswith(("node:", "memory", "object_store"))
    }
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "nothing"


def _actor_options(resources: dict[str, Any]) -> dict[str, Any]:
    """Split ``worker_resources`` into Ray's actor options (custom keys go to ``resources``)."""
    known = {
        "num_cpus",
        "num_gpus",
        "memory",
        "accelerator_type",
        "runtime_env",
        "scheduling_strategy",
    }
    options = {k: v for k, v in resources.items() if k in known}
    custom = {k: v for k, v in resources.items() if k not in known and k != "resources"}
    custom.update(resources.get("resources", {}))
    if custom:
        options["resources"] = custom
    return options
