"""RayRunner: one long-lived InnerLearner actor per worker, and the task source as a named actor."""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.runners.base import (
    NOT_RETRIED,
    LearnerFactory,
    TaskFailedError,
    check_task_retries,
    check_tasks_per_call,
)
from distributed_reptile.tasks.source import TaskSource
from distributed_reptile.tasks.spec import TaskSpec
from distributed_reptile.weights import NumpyWeights

logger = logging.getLogger(__name__)

#: Meta weights up to this size travel inside the actor calls (pickled once per outer step);
#: larger ones go into the object store once and each worker reads them zero-copy. Putting a
#: small object in the store costs more than sending it twice (below Ray's 100 KiB limit for
#: arguments passed by value).
INLINE_WEIGHTS_BYTES = 64 * 1024

#: The weights as an actor-call argument: pickled bytes, or a list holding their reference (the
#: list keeps Ray from fetching them before the call starts, so the fetch is timed).
WeightsArg = bytes | list[ray.ObjectRef]


def weights_argument(meta_weights: NumpyWeights) -> WeightsArg:
    """How ``meta_weights`` go to the workers this outer step (see ``INLINE_WEIGHTS_BYTES``)."""
    if sum(a.nbytes for a in meta_weights.values()) <= INLINE_WEIGHTS_BYTES:
        return pickle.dumps(meta_weights, protocol=5)
    return [ray.put(meta_weights)]


#: How long the end of a batch waits for a restarted or new worker to say who it is.
_INFO_TIMEOUT_S = 30.0


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

    def run(self, jobs: list[TaskJob], weights_arg: WeightsArg) -> list[AdaptedResult]:
        """Run the jobs of one call (one, or ``tasks_per_call``) in order, from the same weights.

        ``weights_arg`` is the pickled weights (small networks) or a one-item list holding their
        object-store reference. A job that raises marks the exception with its index
        (``_job_index``), so the driver knows which job failed and reruns the others without
        counting them.
        """
        t0 = time.perf_counter()
        if isinstance(weights_arg, bytes):
            weights = pickle.loads(weights_arg)
        else:
            weights = ray.get(weights_arg[0])
        fetch = time.perf_counter() - t0
        results: list[AdaptedResult] = []
        for job in jobs:
            try:
                result = self.learner.run(job, weights)
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
        return results


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
        return _unwrap(lambda: ray.get(self.actor.sample_specs.remote(meta_steps, seeds)))

    def settle(self) -> None:
        """Undo the steps drawn ahead and not used."""
        if self._ahead_ref is None:
            return
        used, drawn = self._used, self._drawn_steps()
        self._forget_ahead()
        if used < len(drawn):
            _unwrap(lambda: ray.get(self.actor.rollback.remote(used)))

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
                self._drawn = _unwrap(lambda: ray.get(ref))
            except BaseException:
                self._forget_ahead()
                raise
        return self._drawn

    def _forget_ahead(self) -> None:
        self._planned, self._ahead_ref, self._drawn, self._used = [], None, None, 0

    def reset_history(self) -> None:
        self.settle()
        _unwrap(lambda: ray.get(self.actor.reset_history.remote()))

    def history(self) -> list[dict[str, Any]] | None:
        self.settle()
        return _unwrap(lambda: ray.get(self.actor.history.remote()))

    def state_dict(self) -> dict[str, Any]:
        """The state before the first step drawn ahead and not used; those steps stay drawn (a
        checkpoint every outer step would otherwise redraw them every step)."""
        position = None
        if self._ahead_ref is not None and self._used < len(self._drawn_steps()):
            position = self._used
        return _unwrap(lambda: ray.get(self.actor.state_dict.remote(position)))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.settle()
        _unwrap(lambda: ray.get(self.actor.load_state_dict.remote(state)))

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
    _unwrap(lambda: ray.get(actor.ping.remote()))
    return RemoteTaskSource(
        actor, name, can_prefetch=_unwrap(lambda: ray.get(actor.prefetchable.remote()))
    )


def _unwrap(call: Any) -> Any:
    """Re-raise the user's own error (ValueError, TypeError...) from a Ray task error."""
    try:
        return call()
    except RayTaskError as err:
        cause = err.cause
        if isinstance(cause, ValueError | TypeError | KeyError):
            raise _same_error(cause, err) from err
        raise


def _same_error(cause: BaseException, err: BaseException) -> BaseException:
    """A copy of ``cause`` raised in the driver (its class may not rebuild from ``args``)."""
    try:
        return type(cause)(*cause.args)
    except Exception:
        return RuntimeError(f"{type(cause).__name__}: {cause}")


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
      tasks queued behind it run again on the new worker without counting.

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
        Results, and so the meta weights, do not depend on it.
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
    ) -> None:
        self.num_workers = int(num_workers)
        self.tasks_per_call = check_tasks_per_call(tasks_per_call)
        self.pipeline_depth = max(1, int(pipeline_depth))
        self.task_retries = check_task_retries(task_retries)
        if task_timeout_s is not None and (
            isinstance(task_timeout_s, bool)
            or not isinstance(task_timeout_s, int | float)
            or task_timeout_s <= 0
        ):
            raise ValueError(
                "task_timeout_s must be a positive number of seconds, or None for no limit; "
                f"got {task_timeout_s!r}."
            )
        self.task_timeout_s = None if task_timeout_s is None else float(task_timeout_s)
        resources = dict(worker_resources or {})
        resources.setdefault("num_cpus", 1)
        self.actor_options = _actor_options(resources)
        self.actor_options.update(
            {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
        )
        self._actor_cls = ray.remote(LearnerActor)
        self._learner_factory = learner_factory
        #: One record per rerun or worker change: ``kind`` (``"error"``, ``"timeout"``,
        #: ``"worker_lost"``, ``"result_lost"``, ``"worker_restarted"``), ``meta_step``, ``index``,
        #: ``attempt``, ``worker`` and ``reason``.
        self.retry_events: list[dict[str, Any]] = []
        #: Workers replaced by a new actor (after Ray gave up on one, or after a timeout).
        self.replacements = 0
        # ready() of a replacement actor, pending until it answers (its worker_info then updates).
        self._starting: dict[int, tuple[ray.ObjectRef, float]] = {}
        self._stale: set[int] = set()
        self.actors = [self._new_actor() for _ in range(self.num_workers)]
        try:
            self.worker_info: list[dict[str, Any]] = ray.get(
                [a.ready.remote() for a in self.actors]
            )
        except RayActorError as err:
            self.close()
            raise RuntimeError(
                "The Ray inner-learner workers could not start. Their code (your task callables, "
                "generator and algorithm classes) must be importable on every worker: install your "
                "package on the nodes or ship it with ray job submit --working-dir / runtime_env. "
                f"Ray said: {err}"
            ) from err

    def _new_actor(self) -> Any:
        return self._actor_cls.options(**self.actor_options).remote(self._learner_factory)

    def execute(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every actor and wait for all answers."""
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def run_batch(self, jobs: list[TaskJob], meta_weights: NumpyWeights) -> Iterator[AdaptedResult]:
        weights_arg = weights_argument(meta_weights)
        batch = _Batch(self, jobs, weights_arg)
        try:
            while batch.cursor < len(batch.order):
                batch.submit()
                batch.wait_and_collect()
                while batch.cursor < len(batch.order) and batch.order[batch.cursor] in batch.done:
                    result = batch.done.pop(batch.order[batch.cursor])
                    batch.cursor += 1
                    yield result
            self._refresh_worker_info()
        finally:
            batch.drain()
            del batch, weights_arg

    def chunk_size(self, batch_size: int) -> int:
        """Tasks per actor call for a batch of ``batch_size`` tasks."""
        if self.tasks_per_call == "auto":
            return max(1, -(-batch_size // self.num_workers))
        return int(self.tasks_per_call)

    def replace_actor(self, idx: int) -> None:
        """Kill worker ``idx`` for good and start a new actor in its place."""
        try:
            ray.kill(self.actors[idx], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[idx] = self._new_actor()
        self._starting[idx] = (self.actors[idx].ready.remote(), time.perf_counter())
        self.replacements += 1

    def _refresh_worker_info(self) -> None:
        """Update ``worker_info`` of workers that restarted or were replaced.

        Called at the end of a batch, when the workers are idle; a worker that has not started
        yet keeps its old entry until it answers.
        """
        for idx in sorted(self._stale):
            if idx not in self._starting:
                self._starting[idx] = (self.actors[idx].ready.remote(), time.perf_counter())
        self._stale.clear()
        if not self._starting:
            return
        refs = {ref: idx for idx, (ref, _) in self._starting.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_INFO_TIMEOUT_S)
        for ref in ready:
            self._set_info(refs[ref], ref)

    def _set_info(self, idx: int, ref: ray.ObjectRef) -> None:
        self._starting.pop(idx, None)
        try:
            self.worker_info[idx] = ray.get(ref)
        except RayError as err:
            self.worker_info[idx] = {**self.worker_info[idx], "pid": None, "error": str(err)}

    def _record(self, kind: str, job: TaskJob, attempt: int, idx: int, reason: str) -> None:
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

    def close(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        self._starting.clear()


class _Batch:
    """Book-keeping of one ``run_batch`` call: what runs where, since when, how often it failed."""

    def __init__(self, runner: RayRunner, jobs: list[TaskJob], weights_arg: WeightsArg) -> None:
        self.runner = runner
        self.weights_arg = weights_arg
        self.pending: list[TaskJob] = sorted(jobs, key=lambda j: j.index)
        self.order = [j.index for j in self.pending]
        n = runner.num_workers
        self.chunk = runner.chunk_size(len(self.pending))
        self.window = (n * runner.pipeline_depth + n) * self.chunk
        self.queues: list[deque[ray.ObjectRef]] = [deque() for _ in range(n)]
        self.head_since = [0.0] * n
        #: call -> (worker, the jobs it carries, in order)
        self.inflight: dict[ray.ObjectRef, tuple[int, list[TaskJob]]] = {}
        self.failures: dict[int, int] = {}
        self.submitted_at: dict[int, float] = {}
        self.done: dict[int, AdaptedResult] = {}
        self.cursor = 0

    @property
    def inflight_jobs(self) -> int:
        """Jobs carried by the calls in flight."""
        return sum(len(chunk) for _, chunk in self.inflight.values())

    # ------------------------------------------------------------------ submitting
    def submit(self) -> None:
        """Hand pending jobs to the least-loaded actors, within the result window.

        The job the cursor waits for always passes the window: it may be a rerun, and the results
        held in ``done`` behind it cannot be handed over before it.
        """
        runner = self.runner
        while self.pending:
            job = self.pending[0]
            full = len(self.done) + self.inflight_jobs >= self.window
            if full and job.index != self.order[self.cursor]:
                break
            idx = min(range(runner.num_workers), key=lambda k: len(self.queues[k]))
            if len(self.queues[idx]) >= runner.pipeline_depth:
                break
            chunk = self.pending[: self.chunk]
            del self.pending[: self.chunk]
            now = time.perf_counter()
            ref = runner.actors[idx].run.remote(chunk, self.weights_arg)
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
        runner = self.runner
        starting = {ref: idx for idx, (ref, _) in runner._starting.items()}
        refs = list(self.inflight) + list(starting)
        if not refs:
            return
        ready, rest = ray.wait(refs, num_returns=1, timeout=self._next_deadline())
        if ready and rest:
            # everything else already done, in one call instead of one wait per result
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        for ref in ready:
            if ref in starting:
                idx = starting[ref]
                runner._set_info(idx, ref)
                if self.queues[idx]:
                    self.head_since[idx] = time.perf_counter()
            elif ref in self.inflight:
                # (a call no longer in flight went back to pending with its worker's other calls
                # when an earlier ref of this wait showed that worker lost)
                self._collect(ref)
        if runner.task_timeout_s is not None:
            self._enforce_timeouts()

    def _next_deadline(self) -> float | None:
        limit = self.runner.task_timeout_s
        if limit is None:
            return None
        starts = [t for _, t in self.runner._starting.values()]
        deadlines = [t + limit for t in starts]
        deadlines += [
            self.head_since[i] + self._limit(q[0])
            for i, q in enumerate(self.queues)
            if q and i not in self.runner._starting
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.perf_counter())

    def _limit(self, ref: ray.ObjectRef) -> float:
        """Time limit of call ``ref``: ``task_timeout_s`` per task it carries."""
        limit = self.runner.task_timeout_s
        assert limit is not None
        return limit * len(self.inflight[ref][1])

    def _take(self, ref: ray.ObjectRef) -> tuple[int, list[TaskJob]]:
        idx, chunk = self.inflight.pop(ref)
        queue = self.queues[idx]
        if queue and queue[0] == ref:
            queue.popleft()
            self.head_since[idx] = time.perf_counter()
        else:
            queue.remove(ref)
        return idx, chunk

    def _collect(self, ref: ray.ObjectRef) -> None:
        runner = self.runner
        running = self.inflight[self.queues[self.inflight[ref][0]][0]][1]
        idx, chunk = self._take(ref)
        try:
            value = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            if isinstance(cause, NOT_RETRIED):
                raise _same_error(cause, err) from err
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
            self._clear_worker(idx)
            self.requeue(running[1:])
            self._failed(running[0], err, idx, "worker_lost")
        except RayError as err:  # e.g. the result object was lost with its node
            self.requeue(chunk[1:])
            self._failed(chunk[0], err, idx, "result_lost")
        else:
            results: list[AdaptedResult] = value
            now = time.perf_counter()
            for job, result in zip(chunk, results, strict=True):
                result.timings["round_trip"] = now - self.submitted_at.pop(job.index)
                self.done[job.index] = result
            pid = results[0].worker.get("pid")
            if (
                pid is not None
                and idx not in runner._starting
                and pid != runner.worker_info[idx].get("pid")
            ):
                runner._stale.add(idx)
                runner._record(
                    "worker_restarted",
                    chunk[0],
                    self.failures.get(chunk[0].index, 0) + 1,
                    idx,
                    f"worker {idx} was restarted by Ray "
                    f"(pid {runner.worker_info[idx].get('pid')} -> {pid})",
                )
                runner.worker_info[idx] = {**runner.worker_info[idx], "pid": pid}

    def _enforce_timeouts(self) -> None:
        runner = self.runner
        limit = runner.task_timeout_s
        assert limit is not None
        now = time.perf_counter()
        for idx in range(runner.num_workers):
            if idx in runner._starting:
                ref, since = runner._starting[idx]
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
                runner.replace_actor(idx)
                continue
            # Ray cannot stop a running actor task: kill the worker and start a new one.
            _, chunk = self._take(self.queues[idx][0])
            self._clear_worker(idx)
            self.requeue(chunk[1:])
            self._failed(chunk[0], TimeoutError(what), idx, "timeout")

    def _clear_worker(self, idx: int) -> None:
        """Replace worker ``idx``; the jobs queued on it go back to ``pending`` (not counted)."""
        orphans = [job for ref in list(self.queues[idx]) for job in self._take(ref)[1]]
        self.runner.replace_actor(idx)
        self.requeue(orphans)

    def _failed(self, job: TaskJob, cause: BaseException, idx: int, kind: str) -> None:
        """Count a failed attempt of ``job``: run it again, or fail the run when retries are out."""
        failures = self.failures[job.index] = self.failures.get(job.index, 0) + 1
        if failures > self.runner.task_retries:
            raise TaskFailedError(
                job, cause, worker=f"Ray worker {idx}", attempts=failures
            ) from cause
        reason = f"{type(cause).__name__}: {cause}"
        self.runner._record(kind, job, failures, idx, reason)
        logger.warning(
            "Task meta_step=%s (attempt %d) failed on Ray worker %d (%s); running it again.",
            job.spec.meta_step,
            failures,
            idx,
            reason,
        )
        self.requeue([job])

    # ------------------------------------------------------------------ cleaning up
    def drain(self) -> None:
        """Leave no task running when the batch ends early (an error, or the consumer stopped).

        Waits for the tasks in flight so the next batch does not queue behind them; with a time
        limit, workers whose tasks do not finish within it are replaced.
        """
        if not self.inflight:
            return
        runner = self.runner
        refs = list(self.inflight)
        limit = runner.task_timeout_s
        if limit is None:
            ray.wait(refs, num_returns=len(refs))
            self.inflight.clear()
            return
        _, late = ray.wait(
            refs, num_returns=len(refs), timeout=limit * runner.pipeline_depth * self.chunk
        )
        for idx in sorted({self.inflight[ref][0] for ref in late}):
            runner.replace_actor(idx)
        self.inflight.clear()


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
