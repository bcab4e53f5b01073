"""Reference Reptile loops that the library's backends are measured against.

Two deliberately plain implementations of the same outer step (adapt ``B`` tasks from the meta
weights with SB3's ``learn``, then ``phi <- phi + lr * mean_i(phi_i - phi)``):

* :class:`PoolReference`: a persistent ``multiprocessing.Pool(k)`` (spawn context, torch one
  thread per process) mapping :func:`adapt_task` over the tasks;
* :class:`RayRemoteReference`: one plain ``ray.remote`` call of :func:`adapt_task` per task, at
  most ``k`` in flight, the meta weights put in the object store once per step.

:func:`adapt_task` builds a fresh PPO model for every task, loads the meta weights, runs
``learn(inner_steps)`` and returns the adapted parameters as numpy arrays: the straightforward
way, without the library's model reuse.

This file is a plain module kept beside the benchmark scripts; ``distributed_reptile.bench``
imports it (see ``distributed_reptile.bench.common.reference_module``).
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class ReferenceWorkload:
    """What one task needs: the task family, the SB3 algorithm and the inner-loop budget.

    :param task_callable: ``task_callable(random_seed=...) -> (env, info)``.
    :param rl_algorithm: SB3 algorithm class.
    :param rl_algo_kwargs: its keyword arguments, ``policy`` included.
    :param inner_steps: env steps of one inner loop.
    :param meta_lr: Reptile step size.
    """

    task_callable: Callable[..., Any]
    rl_algorithm: type
    rl_algo_kwargs: dict[str, Any] = field(default_factory=dict)
    inner_steps: int = 2048
    meta_lr: float = 0.5


def build_model(workload: ReferenceWorkload, task_seed: int) -> Any:
    """A new SB3 model on the task of ``task_seed`` (its env is ``model.get_env()``)."""
    env, _ = workload.task_callable(random_seed=task_seed)
    kwargs = copy.deepcopy(workload.rl_algo_kwargs)
    policy = kwargs.pop("policy", "MlpPolicy")
    return workload.rl_algorithm(policy, env, **kwargs)


def policy_weights(model: Any) -> Weights:
    """The policy's full state dict as numpy copies."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.policy.state_dict().items()}


def adapt_task(workload: ReferenceWorkload, meta_weights: Weights, task_seed: int) -> Weights:
    """One inner loop: fresh model, meta weights in, ``learn(inner_steps)``, adapted parameters out."""
    th.set_num_threads(1)
    model = build_model(workload, task_seed)
    model.policy.load_state_dict({k: th.tensor(np.asarray(v)) for k, v in meta_weights.items()})
    model.set_random_seed(task_seed)
    model.learn(workload.inner_steps)
    out = {k: p.detach().cpu().numpy().copy() for k, p in model.policy.named_parameters()}
    model.get_env().close()
    return out


def _adapt_packed(args: tuple[ReferenceWorkload, Weights, int]) -> Weights:
    return adapt_task(*args)


def _init_pool_worker() -> None:
    th.set_num_threads(1)


def _warm_pool_worker(_: int) -> int:
    import stable_baselines3  # noqa: F401  (the import a first task would otherwise pay)

    time.sleep(0.2)  # keep this worker busy so the other workers take the other warm-up calls
    return 0


def reptile_update(model: Any, adapted: Sequence[Weights], meta_lr: float) -> None:
    """``phi <- phi + meta_lr * mean_i(phi_i - phi)`` over the policy's parameters, in task order."""
    with th.no_grad():
        for name, param in model.policy.named_parameters():
            mean = np.mean([np.asarray(w[name]) for w in adapted], axis=0)
            param.add_(th.as_tensor(mean - param.detach().cpu().numpy()), alpha=meta_lr)


class _Reference:
    """The driver side both references share: the meta model and the Reptile update."""

    label = "reference"

    def __init__(self, workload: ReferenceWorkload, workers: int, seed: int = 0) -> None:
        if workers <= 0:
            raise ValueError(f"workers must be a positive integer, got {workers}.")
        self.workload = workload
        self.workers = int(workers)
        th.manual_seed(seed)
        self.meta_model = build_model(workload, seed)
        self.steps_done = 0

    def meta_weights(self) -> Weights:
        return policy_weights(self.meta_model)

    def adapt_all(self, weights: Weights, task_seeds: Sequence[int]) -> list[Weights]:
        raise NotImplementedError

    def outer_step(self, task_seeds: Sequence[int]) -> int:
        """Adapt one task per seed and update the meta model; returns the number of tasks."""
        adapted = self.adapt_all(self.meta_weights(), task_seeds)
        reptile_update(self.meta_model, adapted, self.workload.meta_lr)
        self.steps_done += 1
        return len(adapted)

    def close(self) -> None:
        """Release the workers."""


class PoolReference(_Reference):
    """A persistent ``multiprocessing.Pool(workers)`` (spawn, torch one thread per process).

    :param workload: the task family and budget.
    :param workers: pool size.
    :param seed: seed of the meta model's initial weights.
    """

    label = "pool"

    def __init__(self, workload: ReferenceWorkload, workers: int, seed: int = 0) -> None:
        super().__init__(workload, workers, seed)
        ctx = mp.get_context("spawn")
        self.pool = ctx.Pool(self.workers, initializer=_init_pool_worker)
        self.pool.map(_warm_pool_worker, range(self.workers), chunksize=1)

    def adapt_all(self, weights: Weights, task_seeds: Sequence[int]) -> list[Weights]:
        jobs = [(self.workload, weights, int(s)) for s in task_seeds]
        return self.pool.map(_adapt_packed, jobs, chunksize=1)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class RayRemoteReference(_Reference):
    """One plain ``ray.remote`` call per task (a fresh model each time), at most ``workers`` in flight.

    :param workload: the task family and budget.
    :param workers: tasks in flight at once.
    :param seed: seed of the meta model's initial weights.
    :param num_cpus: Ray CPUs of each call.
    """

    label = "ray_remote"

    def __init__(
        self, workload: ReferenceWorkload, workers: int, seed: int = 0, num_cpus: float = 1
    ) -> None:
        import ray
        from ray import cloudpickle as ray_cloudpickle

        # Ray workers do not have benchmarks/ on their import path: ship this module by value.
        ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])
        super().__init__(workload, workers, seed)
        self.remote_adapt = ray.remote(num_cpus=num_cpus, max_retries=0)(adapt_task)
        self.workload_ref = ray.put(workload)

    def adapt_all(self, weights: Weights, task_seeds: Sequence[int]) -> list[Weights]:
        import ray

        weights_ref = ray.put(weights)
        pending = list(enumerate(task_seeds))
        inflight: dict[Any, int] = {}
        done: dict[int, Weights] = {}
        while pending or inflight:
            while pending and len(inflight) < self.workers:
                index, seed = pending.pop(0)
                inflight[self.remote_adapt.remote(self.workload_ref, weights_ref, int(seed))] = (
                    index
                )
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                done[inflight.pop(ref)] = ray.get(ref)
        return [done[i] for i in range(len(task_seeds))]
