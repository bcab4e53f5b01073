"""One batch of inner loops on the Ray workers: scheduling, retries and time limits."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.ray_pending import WorkersNotStartedError, pending_message
from distributed_reptile.ray_utils import same_error
from distributed_reptile.reduction import TaskReducer
from distributed_reptile.runners.base import NOT_RETRIED, TaskFailedError
from distributed_reptile.runners.chunking import ChunkPlan
from distributed_reptile.runners.ray_pool_api import PoolChange, WorkerPool
from distributed_reptile.runners.ray_sums import NodeSums
from distributed_reptile.runners.ray_transport import WeightsArg

logger = logging.getLogger(__name__)


class BatchScheduler:
    """Book-keeping of one ``run_batch`` call: what runs where, since when, how often it failed.

    Jobs go to the least-loaded workers, ``pipeline_depth`` calls of ``chunk`` jobs at most per
    worker, and at most a window of results is held at once; :meth:`results` hands them over in
    job order. The faults and what each costs are those of
    :class:`~distributed_reptile.runners.ray_runner.RayRunner`.

    Jobs go only to workers known to be up (:meth:`WorkerPool.ready_workers`). At the start of
    the batch and while it waits, at most every ``CLUSTER_CHECK_EVERY_S`` seconds, the pool is
    fitted to the cluster (:meth:`WorkerPool.check_cluster`): a call to a worker whose node is
    gone may never answer nor fail (Ray holds it for a restart that cannot be placed), so the
    waits end at the next check rather than on an error. The jobs of a dropped worker, queued or
    running, go back to ``pending`` without counting as failed attempts.

    :param pool: the workers.
    :param jobs: the jobs of the batch.
    :param weights_arg: the meta weights, as :func:`weights_argument` made them.
    :param chunk: jobs per actor call: a number, or a
        :class:`~distributed_reptile.runners.chunking.ChunkPlan` that sizes each call.
    :param pipeline_depth: calls queued per worker at once.
    :param task_retries: reruns of a failed job before the run fails.
    :param task_timeout_s: time limit of one job in seconds (``None``: no limit).
    :param retry_events: the list that a record of each rerun or worker change is appended to.
    :param reducer: fold each call's tasks into one partial sum where they run (``None``: every
        result carries its adapted weights). A call counts once: its results, partial sum
        included, are taken only when none of its jobs has a result yet.
    :param node_reduction: with ``reducer``, keep the partial sums on the nodes and combine them
        there (``True``) or send each to the driver (``False``; see below).

    **Node reduction** (``node_reduction``): each call keeps its partial sum on its node, the
    sums meet there and the driver receives one per outer step; the book of those sums is a
    :class:`~distributed_reptile.runners.ray_sums.NodeSums` (``sums``).
    """

    def __init__(
        self,
        pool: WorkerPool,
        jobs: list[TaskJob],
        weights_arg: WeightsArg,
        *,
        chunk: int | ChunkPlan,
        pipeline_depth: int,
        task_retries: int,
        task_timeout_s: float | None,
        retry_events: list[dict[str, Any]],
        reducer: TaskReducer | None = None,
        node_reduction: bool = False,
        float32_names: tuple[str, ...] = (),
    ) -> None:
        self.pool = pool
        #: The reduced parameters held in float32 (the step's last combine makes their means in
        #: float32 where it runs; see :meth:`FixedSum.finish`).
        self.float32_names = float32_names
        self.reducer = reducer
        self.weights_arg = weights_arg
        self.pipeline_depth = pipeline_depth
        self.task_retries = task_retries
        self.task_timeout_s = task_timeout_s
        self.retry_events = retry_events
        self.pending: list[TaskJob] = sorted(jobs, key=lambda j: j.index)
        self.order = [j.index for j in self.pending]
        n = self.num_workers = pool.num_workers
        self.plan = (
            chunk
            if isinstance(chunk, ChunkPlan)
            else ChunkPlan(chunk, len(jobs), pool.num_workers, pipeline_depth)
        )
        #: The most jobs one call carries.
        self.chunk = self.plan.most
        self.window = (n * pipeline_depth + n) * self.chunk
        self.queues: list[deque[ray.ObjectRef]] = [deque() for _ in range(n)]
        self.head_since = [0.0] * n
        #: call -> (worker, the jobs it carries, in order)
        self.inflight: dict[ray.ObjectRef, tuple[int, list[TaskJob]]] = {}
        self.failures: dict[int, int] = {}
        self.submitted_at: dict[int, float] = {}
        self.done: dict[int, AdaptedResult] = {}
        #: Jobs whose result has been taken (each counts once, see :meth:`_first_delivery`).
        self.collected: set[int] = set()
        self.cursor = 0
        #: Since when no worker has been in the pool (``time.perf_counter()``), or None.
        self.no_workers_since: float | None = None
        #: Whether the calls keep their partial sums on their nodes (node reduction).
        self.keep_sums = reducer is not None and node_reduction
        self.sums = NodeSums(self, jobs)

    @property
    def inflight_jobs(self) -> int:
        """Jobs carried by the calls in flight."""
        return sum(len(chunk) for _, chunk in self.inflight.values())

    def results(self) -> Iterator[AdaptedResult]:
        """Run the batch; yield one result per job, in job order, as soon as it can be (with node
        reduction, the last once the sums are combined: it carries the step's sum)."""
        self.check_cluster()
        held: AdaptedResult | None = None
        while self.cursor < len(self.order):
            self.submit()
            self.wait_and_collect()
            while self.cursor < len(self.order) and self.order[self.cursor] in self.done:
                result = self.done.pop(self.order[self.cursor])
                self.cursor += 1
                if self.keep_sums and self.cursor == len(self.order):
                    held = result
                else:
                    yield result
        if held is not None:
            held.partial = self.sums.combine()
            yield held

    # ------------------------------------------------------------------ submitting
    def submit(self) -> None:
        """Hand pending jobs to the least-loaded actors, within the result window.

        The job the cursor waits for always passes the window: it may be a rerun, and the results
        held in ``done`` behind it cannot be handed over before it.
        """
        workers = self.pool.ready_workers() if self.pending else []
        while self.pending and workers:
            job = self.pending[0]
            full = len(self.done) + self.inflight_jobs >= self.window
            waited_for = self.order[self.cursor] if self.cursor < len(self.order) else None
            if full and job.index != waited_for:
                break
            idx = min(workers, key=lambda k: len(self.queues[k]))
            if len(self.queues[idx]) >= self.pipeline_depth:
                break
            size = self.plan.next(len(self.pending), workers, idx)
            chunk = self.pending[:size]
            del self.pending[:size]
            now = time.perf_counter()
            if self.keep_sums:
                fold = self.sums.loose_on(self.pool.node_of(idx))
                ref = self.pool.submit(
                    idx, chunk, self.weights_arg, self.reducer, True, tuple(r.ref for r in fold)
                )
                if fold:
                    self.sums.carried[ref] = fold
            else:
                ref = self.pool.submit(idx, chunk, self.weights_arg, self.reducer)
            if not self.queues[idx]:
                self.head_since[idx] = now
            self.queues[idx].append(ref)
            self.inflight[ref] = (idx, chunk)
            for j in chunk:
                self.submitted_at[j.index] = now

    def requeue(self, jobs: list[TaskJob]) -> None:
        self.pending = sorted(self.pending + jobs, key=lambda j: j.index)

    # ------------------------------------------------------------------ collecting
    def wait_and_collect(self) -> None:
        """Wait for one result (or the next deadline) and deal with what came back."""
        starting = {ref: idx for idx, (ref, _) in self.pool.starting.items()}
        refs = list(self.inflight) + list(starting) + list(self.sums.folding)
        if not refs:
            self._wait_for_workers()
            return
        self.no_workers_since = None
        timeout = max(0.0, self.pool.seconds_to_check())
        deadline = self._next_deadline()
        if deadline is not None:
            timeout = min(timeout, deadline)
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            # everything else already done, in one call instead of one wait per result
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        for ref in ready:
            if ref in starting:
                idx = starting[ref]
                change = self.pool.info_ready(idx, ref)
                if change is not None:
                    self.record_change(change)
                if self.queues[idx]:
                    self.head_since[idx] = time.perf_counter()
            elif ref in self.inflight:
                # (a call no longer in flight went back to pending with its worker's other calls
                # when an earlier ref of this wait showed that worker lost)
                self._collect(ref)
            elif ref in self.sums.folding:
                self.sums.fold_done(ref)
        if self.task_timeout_s is not None:
            self._enforce_timeouts()
        self.check_cluster()

    def check_cluster(self) -> None:
        """When due, fit the pool to the cluster; the jobs of the workers dropped go back to
        ``pending`` (not counted as failed attempts)."""
        if self.pool.seconds_to_check() > 0:
            return
        for change in self.pool.check_cluster():
            self.requeue(self._take_all(change.worker))
            self.sums.worker_dropped(change.worker)
            self.record_change(change)
        live = self.pool.live_nodes
        if self.keep_sums and live is not None:
            self.sums.nodes_lost(live)

    def _wait_for_workers(self) -> None:
        """No worker to wait for: every one was dropped. Look at the cluster again at the next
        check (workers start again once it has room), for at most ``start_timeout_s``."""
        now = time.perf_counter()
        if self.no_workers_since is None:
            self.no_workers_since = now
        limit = self.pool.start_timeout_s
        waited = now - self.no_workers_since
        if limit is not None and waited >= limit:
            raise WorkersNotStartedError(
                pending_message(self.num_workers, self.num_workers, waited, self.pool.bundle)
                + f" Every worker was dropped and none could start again within "
                f"worker_start_timeout_s={limit:g}."
            )
        pause = max(0.0, self.pool.seconds_to_check())
        if limit is not None:
            pause = min(pause, limit - waited)
        time.sleep(pause)
        self.check_cluster()

    def _next_deadline(self) -> float | None:
        limit = self.task_timeout_s
        if limit is None:
            return None
        starting = self.pool.starting
        deadlines = [t + limit for _, t in starting.values()]
        deadlines += [
            self.head_since[i] + self._limit(q[0])
            for i, q in enumerate(self.queues)
            if q and i not in starting
        ]
        deadlines += self.sums.deadlines()
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.perf_counter())

    def _limit(self, ref: ray.ObjectRef) -> float:
        """Time limit of call ``ref``: ``task_timeout_s`` per task it carries."""
        limit = self.task_timeout_s
        assert limit is not None
        return limit * len(self.inflight[ref][1])

    def _take(self, ref: ray.ObjectRef) -> tuple[int, list[TaskJob]]:
        """Take call ``ref`` out of flight (the sums it carried wait again); its worker, jobs."""
        self.sums.release(ref)
        idx, chunk = self.inflight.pop(ref)
        queue = self.queues[idx]
        if queue and queue[0] == ref:
            queue.popleft()
            self.head_since[idx] = time.perf_counter()
        else:
            queue.remove(ref)
        return idx, chunk

    def _collect(self, ref: ray.ObjectRef) -> None:
        running = self.inflight[self.queues[self.inflight[ref][0]][0]][1]
        carried = self.sums.carried.get(ref, [])
        idx, chunk = self._take(ref)
        try:
            value = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            if isinstance(cause, NOT_RETRIED):
                raise same_error(cause, err) from err
            failed_index = getattr(cause, "_job_index", chunk[0].index)
            failed = next((j for j in chunk if j.index == failed_index), chunk[0])
            self.requeue([j for j in chunk if j is not failed])  # their results went with the call
            self._failed(failed, cause, idx, "error")
        except RayActorError as err:
            # Ray restarted the worker and reran the task as often as allowed, or the worker is
            # gone for good: start a new one; the jobs queued on the old one run again. The task
            # that was running (the oldest on that worker; the first of its call) takes the blame,
            # whichever error arrived first.
            if running is not chunk:
                self._take(next(r for r in self.queues[idx] if self.inflight[r][1] is running))
                self.requeue(chunk)
            self.clear_worker(idx)
            self.requeue(running[1:])
            self._failed(running[0], err, idx, "worker_lost")
        except RayError as err:  # e.g. the result object was lost with its node
            self.requeue(chunk[1:])
            self._failed(chunk[0], err, idx, "result_lost")
        else:
            results: list[AdaptedResult] = value
            stored = results[0].sum_ref if results else None
            for result in results:
                result.sum_ref = None
            if self.keep_sums and self.sums.rerun_answered(chunk):
                for job in chunk:  # its statistics went out with the first answer
                    self.submitted_at.pop(job.index, None)
            elif not self._first_delivery(chunk):
                return
            else:
                now = time.perf_counter()
                for job, result in zip(chunk, results, strict=True):
                    result.timings["round_trip"] = now - self.submitted_at.pop(job.index)
                    self.done[job.index] = result
            if self.keep_sums:
                self.sums.kept(stored, idx, chunk, carried, results[0])
            if self.plan.speeds is not None:
                self.plan.speeds.observe(idx, results)
            worker = results[0].worker
            restarted = self.pool.check_restarted(idx, worker.get("pid"), worker.get("node_id"))
            if restarted is not None:
                if self.plan.speeds is not None:
                    self.plan.speeds.forget(idx)
                attempt = self.failures.get(chunk[0].index, 0) + 1
                self.record_retry("worker_restarted", chunk[0], attempt, idx, restarted)

    def _first_delivery(self, chunk: list[TaskJob]) -> bool:
        """Whether a call that just answered carries the first results of its jobs. A call whose
        jobs all have results already is dropped (with a partial sum, taking it would count those
        tasks twice); a call that overlaps them only in part cannot be split and fails the run."""
        seen = [j.index for j in chunk if j.index in self.collected]
        if not seen:
            self.collected.update(j.index for j in chunk)
            return True
        if len(seen) == len(chunk):
            logger.warning("Dropped a second answer for tasks %s (already counted).", seen)
            return False
        raise RuntimeError(
            f"A call's tasks {[j.index for j in chunk]} overlap tasks already counted {seen}: "
            "the batch's book-keeping is broken (please report this)."
        )

    def _enforce_timeouts(self) -> None:
        limit = self.task_timeout_s
        assert limit is not None
        now = time.perf_counter()
        starting = self.pool.starting
        for idx in range(self.num_workers):
            if idx in starting:
                ref, since = starting[idx]
                if now - since < limit:
                    continue
                what = f"worker {idx} did not start within task_timeout_s={limit:g} s"
            elif self.queues[idx] and now - self.head_since[idx] >= self._limit(
                self.queues[idx][0]
            ):
                what = f"no result within task_timeout_s={limit:g} s"
                if len(self.inflight[self.queues[idx][0]][1]) > 1:
                    what += " per task"
            else:
                continue
            if not self.queues[idx]:
                self.pool.replace(idx)
                continue
            # Ray cannot stop a running actor task: kill the worker and start a new one.
            _, chunk = self._take(self.queues[idx][0])
            self.clear_worker(idx)
            self.requeue(chunk[1:])
            self._failed(chunk[0], TimeoutError(what), idx, "timeout")
        self.sums.enforce_timeouts(now)  # the same: a new worker, the sums wait again

    def clear_worker(self, idx: int) -> None:
        """Replace worker ``idx``; the jobs queued on it go back to ``pending`` (not counted)."""
        orphans = self._take_all(idx)
        self.pool.replace(idx)
        self.requeue(orphans)

    def _take_all(self, idx: int) -> list[TaskJob]:
        """Take every call queued on worker ``idx`` out of flight; their jobs."""
        return [job for ref in list(self.queues[idx]) for job in self._take(ref)[1]]

    def _failed(self, job: TaskJob, cause: BaseException, idx: int, kind: str) -> None:
        """Count a failed attempt of ``job``: run it again, or fail the run when retries are out."""
        failures = self.failures[job.index] = self.failures.get(job.index, 0) + 1
        if failures > self.task_retries:
            raise TaskFailedError(
                job, cause, worker=f"Ray worker {idx}", attempts=failures
            ) from cause
        reason = f"{type(cause).__name__}: {cause}"
        self.record_retry(kind, job, failures, idx, reason)
        logger.warning(
            "Task meta_step=%s (attempt %d) failed on Ray worker %d (%s); running it again.",
            job.spec.meta_step,
            failures,
            idx,
            reason,
        )
        self.requeue([job])

    def record_change(self, change: PoolChange) -> None:
        """Record a worker that left the pool or came back (``retry_events``, with ``workers``,
        the workers up afterwards; no task), and say so in one line on stderr."""
        self.retry_events.append(
            {
                "kind": change.kind,
                "meta_step": None,
                "index": None,
                "attempt": 0,
                "worker": change.worker,
                "reason": change.reason,
                "workers": change.workers,
            }
        )
        print(f"distributed_reptile: {change.reason}", file=sys.stderr, flush=True)

    def record_retry(self, kind: str, job: TaskJob, attempt: int, idx: int, reason: str) -> None:
        """Append a record of a rerun or worker change to ``retry_events``."""
        self.retry_events.append(
            {
                "kind": kind,
                "meta_step": job.spec.meta_step,
                "index": job.index,
                "attempt": attempt,
                "worker": idx,
                "reason": reason,
            }
        )

    # ------------------------------------------------------------------ cleaning up
    def drain(self) -> None:
        """Leave no task running when the batch ends early (an error, or the consumer stopped).

        Waits for the tasks in flight so the next batch does not queue behind them; with a time
        limit, workers whose tasks do not finish within it are replaced. The cluster is checked
        meanwhile, as in a batch: the calls of a worker dropped from the pool are not waited for.
        """
        limit = self.task_timeout_s
        end = (
            None
            if limit is None
            else time.perf_counter() + limit * self.pipeline_depth * self.chunk
        )
        while self.inflight:
            refs = list(self.inflight)
            timeout = max(0.0, self.pool.seconds_to_check())
            if end is not None:
                timeout = min(timeout, max(0.0, end - time.perf_counter()))
            ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for ref in ready:
                self._take(ref)
            if late and end is not None and time.perf_counter() >= end:
                for idx in sorted({self.inflight[ref][0] for ref in late}):
                    self.pool.replace(idx)
                break
            self.check_cluster()
        self.inflight.clear()
        self.sums.clear()
