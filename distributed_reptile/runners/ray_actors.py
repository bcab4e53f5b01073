"""The Ray workers: the actor body that holds one InnerLearner, and the pool of those actors."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from distributed_reptile.execution.resources import worker_bundle
from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.ray_pending import WorkersNotStartedError, wait_ready
from distributed_reptile.reduction import FixedSum, TaskReducer
from distributed_reptile.runners.base import LearnerFactory
from distributed_reptile.runners.ray_transport import WeightsArg, unpack_weights

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

    def run(
        self, jobs: list[TaskJob], weights_arg: WeightsArg, reducer: TaskReducer | None = None
    ) -> list[AdaptedResult]:
        """Run the jobs of one call (one, or ``tasks_per_call``) in order, from the same weights.

        ``weights_arg`` is the pickled weights (small networks) or a one-item list holding their
        object-store reference. A job that raises marks the exception with its index
        (``_job_index``), so the driver knows which job failed and reruns the others without
        counting them. With ``reducer``, each finished task is folded at once into one partial
        sum for the call (its weights are dropped, non-finite ones are named and left out), and
        the call sends back that sum, on its first result, with every task's statistics.
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
        if results:
            results[0].partial = partial
        return results


class ActorPool:
    """The ``num_workers`` :class:`LearnerActor` workers: starts them, replaces one, stops them,
    and keeps what each said about itself (``worker_info``: pid, hostname, node, resources).

    A replacement actor answers ``ready()`` in its own time: until it does it is listed in
    :attr:`starting`, and its ``worker_info`` entry is updated when the answer is handed to
    :meth:`info_ready` (or collected by :meth:`refresh_worker_info`).

    :param learner_factory: builds the InnerLearner inside each actor.
    :param num_workers: number of actors.
    :param worker_resources: Ray resources of each actor (default ``{"num_cpus": 1}``).
    :param max_restarts: restarts of a dead actor by Ray.
    :param max_task_retries: Ray's retries of a task whose actor died.
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
        self._actor_cls = ray.remote(LearnerActor)
        self._learner_factory = learner_factory
        #: Workers replaced by a new actor (after Ray gave up on one, or after a timeout).
        self.replacements = 0
        # ready() of a replacement actor, pending until it answers (its worker_info then updates).
        self._starting: dict[int, tuple[ray.ObjectRef, float]] = {}
        self._stale: set[int] = set()
        self._actors = [self._new_actor() for _ in range(self.num_workers)]
        try:
            self.worker_info: list[dict[str, Any]] = wait_ready(
                [a.ready.remote() for a in self._actors],
                worker_bundle(resources),
                start_timeout_s,
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

    def submit(
        self,
        idx: int,
        jobs: list[TaskJob],
        weights_arg: WeightsArg,
        reducer: TaskReducer | None = None,
    ) -> ray.ObjectRef:
        """Queue ``jobs`` (one actor call) on worker ``idx``; the call's result reference."""
        ref: ray.ObjectRef = self._actors[idx].run.remote(jobs, weights_arg, reducer)
        return ref

    def replace(self, idx: int) -> None:
        """Kill worker ``idx`` for good and start a new actor in its place."""
        try:
            ray.kill(self._actors[idx], no_restart=True)
        except Exception:  # already gone
            pass
        self._actors[idx] = self._new_actor()
        self._starting[idx] = (self._actors[idx].ready.remote(), time.perf_counter())
        self.replacements += 1

    def info_ready(self, idx: int, ref: ray.ObjectRef) -> None:
        """Take the answer ``ref`` of worker ``idx``'s ``ready()`` call as its ``worker_info``
        (an actor that failed to start keeps its old entry, with ``pid`` None and the error)."""
        self._starting.pop(idx, None)
        try:
            self.worker_info[idx] = ray.get(ref)
        except RayError as err:
            self.worker_info[idx] = {**self.worker_info[idx], "pid": None, "error": str(err)}

    def check_restarted(self, idx: int, pid: int | None) -> str | None:
        """Whether a result that worker ``idx`` sent from process ``pid`` shows that Ray restarted
        the worker: if so, take the new pid, refresh its ``worker_info`` at the end of the batch,
        and say what happened; else None."""
        old = self.worker_info[idx].get("pid")
        if pid is None or idx in self._starting or pid == old:
            return None
        self._stale.add(idx)
        self.worker_info[idx] = {**self.worker_info[idx], "pid": pid}
        return f"worker {idx} was restarted by Ray (pid {old} -> {pid})"

    def refresh_worker_info(self) -> None:
        """Update ``worker_info`` of workers that restarted or were replaced.

        Called at the end of a batch, when the workers are idle; a worker that has not started
        yet keeps its old entry until it answers.
        """
        for idx in sorted(self._stale):
            if idx not in self._starting:
                self._starting[idx] = (self._actors[idx].ready.remote(), time.perf_counter())
        self._stale.clear()
        if not self._starting:
            return
        refs = {ref: idx for idx, (ref, _) in self._starting.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_INFO_TIMEOUT_S)
        for ref in ready:
            self.info_ready(refs[ref], ref)

    def stop(self) -> None:
        """Kill every actor (for good); the pool is empty afterwards."""
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        self._starting.clear()


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
