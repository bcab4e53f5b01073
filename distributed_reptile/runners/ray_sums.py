"""Node reduction: partial sums kept in the nodes' object stores and combined there, so that the
driver receives one sum per outer step whatever the numbers of tasks, calls and nodes.

The worker side (:class:`StoredSum`, :class:`CombineReply`, :func:`gather`) is used by
:class:`~distributed_reptile.runners.ray_actors.LearnerActor`; the driver side
(:class:`NodeSums`) by :class:`~distributed_reptile.runners.ray_batch.BatchScheduler`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayError, RayTaskError

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.ray_utils import same_error
from distributed_reptile.reduction import FixedSum
from distributed_reptile.runners.base import NOT_RETRIED, TaskFailedError

if TYPE_CHECKING:
    from distributed_reptile.runners.ray_batch import BatchScheduler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredSum:
    """A partial sum (:class:`~distributed_reptile.reduction.FixedSum`) that a worker kept in its
    node's object store (``ray.put``) instead of sending it: its reference, the node that holds
    it, and which of the sums the worker was asked to fold into it it could not read (``lost``:
    their positions; see :meth:`LearnerActor.run`).

    Only the reference travels to the driver, nested in the reply: Ray fetches a nested object
    only when someone asks for it, so the sum stays on its node until another worker combines it.
    The worker that put it owns it: when that process dies, the sum is gone (``OwnerDiedError``)
    even if its node lives on, and the tasks it covers must run again.
    """

    ref: ray.ObjectRef
    node_id: str | None
    lost: tuple[int, ...] = ()


@dataclass(frozen=True)
class CombineReply:
    """What :meth:`LearnerActor.combine` sends back: the sum of the partial sums it could read
    (kept on the worker's node as a :class:`StoredSum`, or the
    :class:`~distributed_reptile.reduction.FixedSum` itself), and the positions of those it
    could not (``lost``, each with Ray's error)."""

    total: StoredSum | FixedSum
    lost: tuple[tuple[int, str], ...]


def gather(refs: list[ray.ObjectRef], into: FixedSum) -> list[tuple[int, str]]:
    """Merge the partial sums behind ``refs`` into ``into``; the positions of those that could not
    be read (their owner died, their node was lost), each with the error, left out.

    All are fetched at once (the transfers from other nodes overlap); when one is lost, one at a
    time, to tell which."""
    try:
        parts = ray.get(list(refs))
    except ObjectLostError:
        pass
    else:
        for part in parts:
            into.merge(part)
        return []
    lost = []
    for i, ref in enumerate(refs):
        try:
            part = ray.get(ref)
        except ObjectLostError as err:  # OwnerDiedError and the other ways an object is gone
            lost.append((i, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
            continue
        into.merge(part)
        del part  # (a zero-copy view of the object store: let it go at once)
    return lost


@dataclass(eq=False)
class SumRecord:
    """A partial sum kept on a node (node reduction): its reference, the node that holds it, the
    jobs whose contributions it holds, and the worker that put it there (its process owns it)."""

    ref: ray.ObjectRef
    node: str | None
    jobs: frozenset[int]
    worker: int


@dataclass(eq=False)
class FoldCall:
    """A :meth:`WorkerPool.combine` call in flight: on which worker, the sums it merges, whether
    it keeps the result on its node (``keep``) or sends it back, since when."""

    worker: int
    records: list[SumRecord]
    keep: bool
    since: float


class NodeSums:
    """The driver's book of the partial sums kept on the nodes during one batch.

    Each call keeps its partial sum in its node's object store (a :class:`StoredSum`) and sends
    the statistics of its tasks; the driver notes where each sum is (a :class:`SumRecord`:
    reference, node, the jobs it covers). A call sent to a node that already holds sums takes them
    along and adds them to its own (``fold``), so a node holds about one sum per worker, not one
    per call. Results are handed over in job order as they come, except the last, which is held
    back until every job has a result; then (:meth:`combine`) the sums of each node are combined
    on a worker of that node (one call per node holding more than one, in parallel), and those
    node sums on a worker of the node holding the most, whose
    :class:`~distributed_reptile.reduction.FixedSum` comes back to the driver as the ``partial``
    of that last result. The driver so receives one sum of ``8 P`` bytes per outer step, whatever
    the numbers of calls and nodes, for one or two more actor calls at the end of the step (one
    when a single node holds sums).

    Integer sums give the same bits in any grouping, so where the sums meet does not matter;
    what matters is that each job counts exactly once. A record covers a set of jobs; the sets of
    the records (waiting, carried by a call or a combine in flight) never overlap and together
    cover every job whose result was taken. A call or combine that succeeds replaces the records
    it merged by one covering their union; one that fails gives them back unchanged. A sum that
    cannot be read any more (its owner process died, its node was lost: a worker says so, or the
    cluster check shows the node gone) takes its jobs out of the sum: they are *owed*, and run
    again once every job has a result, for their sums only (their statistics went out already;
    a rerun gives the same bits). Each loss is a ``"sum_lost"`` retry event per job; it does not
    count against ``task_retries`` (the task did not fail), but a job whose sum is lost more
    than ``max(task_retries, 1) + 2`` times fails the run.

    :param batch: the batch whose calls keep the sums (its pool, queues, retries and waits).
    :param jobs: the jobs of the batch.
    """

    def __init__(self, batch: BatchScheduler, jobs: list[TaskJob]) -> None:
        self.batch = batch
        self.jobs_by_index = {j.index: j for j in jobs}
        #: Sums kept on the nodes, not in a call or combine now.
        self.loose: list[SumRecord] = []
        #: Task call -> the sums it was given to add to its own.
        self.carried: dict[ray.ObjectRef, list[SumRecord]] = {}
        #: Combine calls in flight.
        self.folding: dict[ray.ObjectRef, FoldCall] = {}
        #: Jobs whose contribution is in no sum any more (lost): to run again for their sums.
        self.owed: set[int] = set()
        self.sums_lost: dict[int, int] = {}
        #: The combined sums received by the driver (one, unless sums were lost on the way).
        self.received: list[FixedSum] = []
        self.fold_failures = 0
        self._final_node: str | None = None

    # ------------------------------------------------------------------ task calls
    def loose_on(self, node: str | None) -> list[SumRecord]:
        """Take the waiting sums kept on ``node``, for a call there to add to its own."""
        if node is None:
            return []
        here = [r for r in self.loose if r.node == node]
        if here:
            self.loose = [r for r in self.loose if r.node != node]
        return here

    def release(self, ref: ray.ObjectRef) -> None:
        """Call ``ref`` left flight: the sums it carried wait again."""
        self.loose.extend(self.carried.pop(ref, ()))

    def rerun_answered(self, chunk: list[TaskJob]) -> bool:
        """Whether a call that answered was a rerun for the sums only (every job of it owed): its
        jobs are owed no more, and its statistics went out with the first answer."""
        if not all(j.index in self.owed for j in chunk):
            return False
        self.owed.difference_update(j.index for j in chunk)
        return True

    def kept(
        self,
        stored: StoredSum | None,
        idx: int,
        chunk: list[TaskJob],
        carried: list[SumRecord],
        first: AdaptedResult,
    ) -> None:
        """Note the sum that a call taken just now kept on its node: it covers the call's jobs
        and the sums it was given (taken back from the waiting ones), less those it could not
        read, whose jobs are owed."""
        if not isinstance(stored, StoredSum):
            raise RuntimeError(
                f"Ray worker {idx} kept no partial sum for tasks {[j.index for j in chunk]}: the "
                "workers run another version of distributed_reptile than the driver."
            )
        given = {id(r) for r in carried}
        self.loose = [r for r in self.loose if id(r) not in given]
        jobs = {j.index for j in chunk}
        for i, record in enumerate(carried):
            if i in stored.lost:
                self.owe(record, f"worker {idx} could not read it")
            else:
                jobs |= record.jobs
        node = stored.node_id or first.worker.get("node_id") or self.batch.pool.node_of(idx)
        self.loose.append(SumRecord(stored.ref, node, frozenset(jobs), idx))

    def owe(self, record: SumRecord, why: str) -> None:
        """The sum ``record`` is lost: its jobs are owed (run again once every job has a
        result), each with a ``"sum_lost"`` event."""
        limit = max(self.batch.task_retries, 1) + 2
        reason = f"the partial sum kept by worker {record.worker} is lost ({why})"
        for index in sorted(record.jobs):
            job = self.jobs_by_index[index]
            lost = self.sums_lost[index] = self.sums_lost.get(index, 0) + 1
            if lost > limit:
                raise TaskFailedError(
                    job, RuntimeError(f"{reason}, for the {lost}th time"), attempts=lost
                )
            self.owed.add(index)
            self.batch.record_retry("sum_lost", job, lost, record.worker, reason)
        logger.warning("Tasks %s run again for their sums: %s.", sorted(record.jobs), reason)

    # ------------------------------------------------------------------ the cluster
    def worker_dropped(self, idx: int) -> None:
        """Worker ``idx`` left the pool: the sums its combines carried wait again (not counted
        as failures)."""
        for ref, call in list(self.folding.items()):
            if call.worker == idx:
                del self.folding[ref]
                self.fold_failed(call, "its worker was dropped", counted=False)

    def nodes_lost(self, live: set[str]) -> None:
        """The sums waiting on nodes not in ``live`` are gone: their jobs are owed."""
        for record in [r for r in self.loose if r.node is not None and r.node not in live]:
            self.loose.remove(record)
            self.owe(record, f"its node {record.node[:8]} was lost")  # type: ignore[index]

    def deadlines(self) -> list[float]:
        """When each combine in flight runs out of time (``time.perf_counter()``)."""
        return [call.since + self.fold_limit() for call in self.folding.values()]

    def enforce_timeouts(self, now: float) -> None:
        """A combine past its time limit: its worker is replaced, its sums wait again."""
        for ref, call in list(self.folding.items()):
            if now - call.since >= self.fold_limit():
                del self.folding[ref]
                why = f"TimeoutError: no sum within task_timeout_s={self.batch.task_timeout_s:g} s"
                self.fold_failed(call, why)
                self.batch.clear_worker(call.worker)

    def clear(self) -> None:
        """The batch ended early: forget the calls and combines in flight."""
        self.carried.clear()
        self.folding.clear()  # (a combine takes milliseconds: not waited for)

    # ------------------------------------------------------------------ combining
    def combine(self) -> FixedSum:
        """Once every job has a result: combine the sums kept on the nodes, running the owed
        jobs again first; the step's sum, as the driver received it."""
        batch = self.batch
        batch.check_cluster()  # (when due) sums kept on a node lost meanwhile are owed at once
        final_next = False
        while True:
            if batch.pending or batch.inflight or self.folding:
                batch.submit()
                batch.wait_and_collect()
            elif self.owed:
                batch.requeue([self.jobs_by_index[i] for i in sorted(self.owed)])
            elif not self.loose:
                break
            elif not final_next:
                final_next = True
                self._fold_nodes()
            else:
                final_next = False
                self._fold_final()
        if len(self.received) == 1:
            return self.received[0]
        return FixedSum.of(self.received)

    def _fold_nodes(self) -> None:
        """First stage: on each node that holds several sums, but the one chosen for the last
        stage, a worker there combines them into one, kept there."""
        by_node: dict[str | None, list[SumRecord]] = {}
        for record in self.loose:
            by_node.setdefault(record.node, []).append(record)
        workers = {node: self._worker_on(node) for node in by_node}
        candidates = [n for n in by_node if workers[n] is not None] or list(by_node)
        self._final_node = max(candidates, key=lambda n: len(by_node[n]))
        for node, records in by_node.items():
            idx = workers[node]
            if node != self._final_node and len(records) > 1 and idx is not None:
                self._fold(idx, records, keep=True)

    def _fold_final(self) -> None:
        """Last stage: one worker, on the node holding the most sums if it can, combines every
        waiting sum and sends the result back."""
        idx = self._worker_on(self._final_node)
        if idx is None:
            idx = self._worker_on(None)
        if idx is None:  # no worker up: wait for one (or fail after worker_start_timeout_s)
            self.batch.wait_and_collect()
            return
        # The only sum the step will receive (nothing received yet): the worker makes the means
        # there, unless it cannot read every sum (then more sums will follow, to be added up).
        finish = None if self.received else self.batch.float32_names
        self._fold(idx, list(self.loose), keep=False, finish=finish)

    def _worker_on(self, node: str | None) -> int | None:
        """The least busy worker up on ``node`` (any node: None), or None."""
        pool, queues = self.batch.pool, self.batch.queues
        busy = [0] * self.batch.num_workers
        for call in self.folding.values():
            busy[call.worker] += 1
        ready = [i for i in pool.ready_workers() if node is None or pool.node_of(i) == node]
        return min(ready, key=lambda i: len(queues[i]) + busy[i], default=None)

    def _fold(
        self,
        idx: int,
        records: list[SumRecord],
        keep: bool,
        finish: tuple[str, ...] | None = None,
    ) -> None:
        given = {id(r) for r in records}
        self.loose = [r for r in self.loose if id(r) not in given]
        ref = self.batch.pool.combine(idx, [r.ref for r in records], keep, finish)
        self.folding[ref] = FoldCall(idx, records, keep, time.perf_counter())

    def fold_limit(self) -> float:
        """Time limit of a combine: ``task_timeout_s`` (a combine takes far less than a task)."""
        limit = self.batch.task_timeout_s
        return limit if limit is not None else float("inf")

    def fold_done(self, ref: ray.ObjectRef) -> None:
        """A combine answered: its sum replaces those it read (kept on its node, or received
        here); the jobs of those it could not read are owed. One that failed gives its sums
        back, to be combined again."""
        call = self.folding.pop(ref)
        try:
            reply: CombineReply = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            if isinstance(cause, NOT_RETRIED):  # e.g. SumOverflowError: the same again
                raise same_error(cause, err) from err
            self.fold_failed(call, f"{type(cause).__name__}: {cause}")
            return
        except RayActorError as err:
            self.fold_failed(call, f"{type(err).__name__}: {err}")
            self.batch.clear_worker(call.worker)
            return
        except RayError as err:
            self.fold_failed(call, f"{type(err).__name__}: {err}")
            return
        self.fold_failures = 0
        lost = dict(reply.lost)
        merged: set[int] = set()
        for i, record in enumerate(call.records):
            if i in lost:
                self.owe(record, f"worker {call.worker} could not read it: {lost[i]}")
            else:
                merged |= record.jobs
        if not call.keep:
            assert isinstance(reply.total, FixedSum)
            self.received.append(reply.total)
        elif merged:
            stored = reply.total
            assert isinstance(stored, StoredSum)
            node = stored.node_id or self.batch.pool.node_of(call.worker)
            self.loose.append(SumRecord(stored.ref, node, frozenset(merged), call.worker))

    def fold_failed(self, call: FoldCall, reason: str, counted: bool = True) -> None:
        """A combine gave no answer: its sums wait again (those still there are combined by the
        next one; those gone are found out then). More than ``max(task_retries, 1) + 2`` failures
        in a row (``counted``) fail the run."""
        self.loose.extend(call.records)
        if not counted:
            return
        self.fold_failures += 1
        limit = max(self.batch.task_retries, 1) + 2
        if self.fold_failures > limit:
            raise RuntimeError(
                f"Combining the partial sums of the outer step failed {self.fold_failures} times "
                f"in a row (last on Ray worker {call.worker}: {reason}). Set node_reduction=false "
                "to send each call's sum to the driver instead."
            )
        logger.warning(
            "Combining %d partial sums on Ray worker %d failed (%s); trying again.",
            len(call.records),
            call.worker,
            reason,
        )
