"""The Ray backend: inner loops on long-lived actors, the task source as a named actor."""

from __future__ import annotations

import warnings
from typing import Any

from distributed_reptile.execution.resources import (
    InsufficientResourcesError,
    check_pool_fits,
    worker_bundle,
    workers_that_fit,
)
from distributed_reptile.ray_utils import ensure_ray
from distributed_reptile.runners.base import LearnerFactory, Runner, TaskSourceHandle
from distributed_reptile.runners.ray_runner import RayRunner
from distributed_reptile.settings import ExecutionSettings
from distributed_reptile.tasks.remote import make_remote_task_source


class RayBackend:
    """Joins the cluster at ``ray_address`` (or ``RAY_ADDRESS``), or starts a local Ray instance
    on 127.0.0.1; closing stops the instance it started, or disconnects from the cluster it
    joined (the cluster keeps running). A Ray instance already initialised is left alone."""

    name = "ray"

    def __init__(self, settings: ExecutionSettings) -> None:
        self.settings = settings
        self.mode = ensure_ray(
            settings.ray_address,
            ray_init_kwargs=settings.ray_init_kwargs,
            connect_timeout_s=settings.connect_timeout_s,
        )
        self._num_workers = self._resolve_num_workers(settings.num_workers)

    @property
    def num_workers(self) -> int:
        return self._num_workers

    def _resolve_num_workers(self, num_workers: int | str) -> int:
        """``num_workers`` as a number: ``"auto"`` is as many workers as the cluster's resources
        hold now (at least one), said in one line."""
        if num_workers != "auto":
            return int(num_workers)
        import ray

        bundle = worker_bundle(self.settings.worker_resources)
        cluster = ray.cluster_resources()
        fit = max(1, workers_that_fit(bundle, cluster))
        print(
            f"distributed_reptile: num_workers=auto -> {fit} (the Ray cluster has "
            f"{cluster.get('CPU', 0):g} CPU; each worker asks for "
            + ", ".join(f"{v:g} {k}" for k, v in sorted(bundle.items()))
            + ")",
            flush=True,
        )
        return fit

    def make_task_source(
        self, generator_cls: type, generator_params: dict[str, Any]
    ) -> TaskSourceHandle:
        return make_remote_task_source(generator_cls, generator_params)

    def make_runner(self, learner_factory: LearnerFactory) -> Runner:
        s = self.settings
        self.check_capacity()
        return RayRunner(
            learner_factory,
            num_workers=self.num_workers,
            worker_resources=s.worker_resources,
            max_restarts=s.max_worker_restarts,
            max_task_retries=s.max_task_retries,
            task_retries=s.task_retries,
            task_timeout_s=s.task_timeout_s,
            tasks_per_call=s.tasks_per_call,
            node_reduction=s.node_reduction,
            worker_start_timeout_s=s.worker_start_timeout_s,
        )

    def check_capacity(self) -> None:
        """Refuse at once a worker pool that the Ray instance this backend started can never hold
        (Ray would otherwise wait for it forever without a word). On a cluster it joined, which
        may still grow, the same finding is a warning."""
        import ray

        s = self.settings
        try:
            check_pool_fits(self.num_workers, s.worker_resources, ray.cluster_resources())
        except InsufficientResourcesError as err:
            if self.mode == "started":
                raise
            warnings.warn(
                f"{err} Waiting for the cluster to grow (an autoscaler may add nodes).",
                RuntimeWarning,
                stacklevel=3,
            )

    def close(self) -> None:
        if self.mode in ("started", "joined"):
            import ray

            ray.shutdown()
            self.mode = "none"
