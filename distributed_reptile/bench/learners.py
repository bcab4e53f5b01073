"""Inner learners that do no learning, to measure what the orchestration itself costs."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob
from distributed_reptile.weights import NumpyWeights


class NoOpLearner(InnerLearner):
    """Returns the meta weights at once: builds no env and no model, runs no SB3 code.

    What remains of a task is the runner's work: shipping the job and the weights reference,
    fetching the weights on the worker, sending the (unchanged) weights back and folding them into
    the meta-update. The returned arrays are the ones received, so on a Ray worker the result
    transfer copies a full set of weights, as a real task's does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._worker = {"pid": os.getpid(), "hostname": socket.gethostname()}

    def pause(self) -> float:
        """Seconds the task waits before answering (none here)."""
        return 0.0

    def run(self, job: TaskJob, meta_weights: NumpyWeights) -> AdaptedResult:
        t0 = time.perf_counter()
        pause = self.pause()
        if pause > 0:
            time.sleep(pause)
        t_learn = time.perf_counter()
        return AdaptedResult(
            meta_step=job.spec.meta_step,
            index=job.index,
            weights=dict(meta_weights),
            episode_returns=[],
            env_steps=0,
            timings={
                "env_build": 0.0,
                "model_ready": 0.0,
                "learn": t_learn - t0,
                "total": time.perf_counter() - t0,
            },
            worker=dict(self._worker),
            task=job.spec.describe(),
        )


class SleepLearner(NoOpLearner):
    """Sleeps ``inner_loop_params["sleep_seconds"]`` per task (no CPU), then returns the meta weights.

    Many of these fit on a couple of cores, so a large worker pool can be simulated on a small
    machine: a task's duration is known exactly, and what an outer step takes beyond it is the
    orchestration's cost.
    """

    def pause(self) -> float:
        return float(self.inner_loop_params.get("sleep_seconds", 0.0))
