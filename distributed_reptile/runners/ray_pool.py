"""RayRunner: one long-lived InnerLearner actor per worker, and the task source as a named actor."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.runners.base import LearnerFactory, TaskFailedError
from distributed_reptile.tasks.source import TaskSource
from distributed_reptile.tasks.spec import TaskSpec
from distributed_reptile.weights import NumpyWeights


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

    def run(self, job: TaskJob, boxed_weights: list[ray.ObjectRef]) -> AdaptedResult:
        t0 = time.perf_counter()
        weights = ray.get(boxed_weights[0])
        fetch = time.perf_counter() - t0
        result = self.learner.run(job, weights)
        result.timings["weight_fetch"] = fetch
        return result


class RemoteTaskSource:
    """Synchronous proxy to the named task-source actor (same methods as :class:`TaskSource`)."""

    def __init__(self, actor: Any, name: str) -> None:
        self.actor = actor
        self.name = name

    def sample_specs(self, meta_steps: list[int], seeds: list[int | None]) -> list[TaskSpec]:
        return _unwrap(lambda: ray.get(self.actor.sample_specs.remote(meta_steps, seeds)))

    def reset_history(self) -> None:
        _unwrap(lambda: ray.get(self.actor.reset_history.remote()))

    def history(self) -> list[dict[str, Any]] | None:
        return _unwrap(lambda: ray.get(self.actor.history.remote()))

    def state_dict(self) -> dict[str, Any]:
        return _unwrap(lambda: ray.get(self.actor.state_dict.remote()))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _unwrap(lambda: ray.get(self.actor.load_state_dict.remote(state)))

    def close(self) -> None:
        ray.kill(self.actor, no_restart=True)


def make_remote_task_source(generator_cls: type, generator_params: dict[str, Any]) -> RemoteTaskSource:
    """Start the named task-source actor that owns sampling and the revisit history."""
    name = f"distributed_reptile_task_source_{uuid.uuid4().hex[:12]}"
    actor = (
        ray.remote(TaskSource)
        .options(name=name, num_cpus=0, max_restarts=0)
        .remote(generator_cls, generator_params, True)
    )
    source = RemoteTaskSource(actor, name)
    _unwrap(lambda: ray.get(actor.ping.remote()))
    return source


def _unwrap(call: Any) -> Any:
    """Re-raise the user's own error (ValueError, TypeError...) from a Ray task error."""
    try:
        return call()
    except RayTaskError as err:
        cause = err.cause
        if isinstance(cause, ValueError | TypeError | KeyError):
            raise type(cause)(*cause.args) from err
        raise


class RayRunner:
    """Runs inner loops on ``num_workers`` long-lived Ray actors.

    Meta weights go into the object store once per outer step; each actor reads them zero-copy.
    Results are collected as they arrive (``ray.wait``) and handed over in task order, holding at
    most ``window`` results at once, so the fold into the meta weights does not depend on scheduling.

    :param learner_factory: builds the InnerLearner inside each actor.
    :param num_workers: number of actors.
    :param worker_resources: Ray resources of each actor (default ``{"num_cpus": 1}``).
    :param max_restarts: restarts of a dead actor (its tasks are retried, see ``max_task_retries``).
    :param max_task_retries: retries of a task whose actor died.
    :param pipeline_depth: tasks queued per actor at once (2 overlaps transfer with compute).
    """

    def __init__(
        self,
        learner_factory: LearnerFactory,
        num_workers: int,
        worker_resources: dict[str, Any] | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        pipeline_depth: int = 2,
    ) -> None:
        self.num_workers = int(num_workers)
        self.pipeline_depth = max(1, int(pipeline_depth))
        resources = dict(worker_resources or {})
        resources.setdefault("num_cpus", 1)
        self.actor_options = _actor_options(resources)
        self.actor_options.update({"max_restarts": max_restarts, "max_task_retries": max_task_retries})
        self._actor_cls = ray.remote(LearnerActor)
        self._learner_factory = learner_factory
        self.actors = [self._actor_cls.options(**self.actor_options).remote(learner_factory)
                       for _ in range(self.num_workers)]
        try:
            self.worker_info = ray.get([a.ready.remote() for a in self.actors])
        except RayActorError as err:
            self.close()
            raise RuntimeError(
                "The Ray inner-learner workers could not start. Their code (your task callables, "
                "generator and algorithm classes) must be importable on every worker: install your "
                "package on the nodes or ship it with ray job submit --working-dir / runtime_env. "
                f"Ray said: {err}"
            ) from err

    def execute(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every actor and wait for all answers."""
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def run_batch(self, jobs: list[TaskJob], meta_weights: NumpyWeights) -> Iterator[AdaptedResult]:
        weights_ref = ray.put(meta_weights)
        pending = deque(sorted(jobs, key=lambda j: j.index))
        window = self.num_workers * self.pipeline_depth + self.num_workers
        load = [0] * self.num_workers
        inflight: dict[ray.ObjectRef, tuple[int, TaskJob]] = {}
        done: dict[int, AdaptedResult] = {}
        order = [j.index for j in pending]
        job_submit_times: dict[int, float] = {}
        cursor = 0
        try:
            while cursor < len(order):
                while pending and len(done) + len(inflight) < window:
                    actor_idx = min(range(self.num_workers), key=load.__getitem__)
                    if load[actor_idx] >= self.pipeline_depth:
                        break
                    job = pending.popleft()
                    submitted_at = time.perf_counter()
                    ref = self.actors[actor_idx].run.remote(job, [weights_ref])
                    inflight[ref] = (actor_idx, job)
                    load[actor_idx] += 1
                    job_submit_times[job.index] = submitted_at
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    actor_idx, job = inflight.pop(ref)
                    load[actor_idx] -= 1
                    result = self._get(ref, job, actor_idx)
                    result.timings["round_trip"] = time.perf_counter() - job_submit_times.pop(job.index)
                    done[job.index] = result
                while cursor < len(order) and order[cursor] in done:
                    yield done.pop(order[cursor])
                    cursor += 1
        finally:
            if inflight:
                ray.wait(list(inflight), num_returns=len(inflight))
            del weights_ref

    def _get(self, ref: ray.ObjectRef, job: TaskJob, actor_idx: int) -> AdaptedResult:
        try:
            return ray.get(ref)
        except RayTaskError as err:
            cause = err.cause
            if isinstance(cause, ValueError | TypeError):
                raise type(cause)(*cause.args) from err
            raise TaskFailedError(job, cause if cause is not None else err, worker=f"Ray worker {actor_idx}") from err
        except RayActorError as err:
            raise TaskFailedError(job, err, worker=f"Ray worker {actor_idx}") from err

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def _actor_options(resources: dict[str, Any]) -> dict[str, Any]:
    """Split ``worker_resources`` into Ray's actor options (custom keys go to ``resources``)."""
    known = {"num_cpus", "num_gpus", "memory", "accelerator_type", "runtime_env", "scheduling_strategy"}
    options = {k: v for k, v in resources.items() if k in known}
    custom = {k: v for k, v in resources.items() if k not in known and k != "resources"}
    custom.update(resources.get("resources", {}))
    if custom:
        options["resources"] = custom
    return options
