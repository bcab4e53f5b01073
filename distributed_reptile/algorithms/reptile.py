"""ReptileMetaRL: phi <- phi + lr * mean_i(phi_i - phi), or the same direction through an optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch as th

from distributed_reptile.algorithms.base import BaseMetaAlgorithm
from distributed_reptile.inner.learner import AdaptedResult


class ReptileMetaRL(BaseMetaAlgorithm):
    """Reptile (first-order meta-learning) over SB3 inner learners.

    Without a meta-optimizer: ``phi <- phi + lr(o) * (1/B) * sum_i (phi_i - phi)`` over the meta
    policy's named parameters, skipping those matched by ``ignored_layers``. With
    ``use_meta_optimizer=True``: an optimizer step with gradient ``-(1/B) * sum_i (phi_i - phi)``.
    The sum runs in task order whatever the order results arrived in, so the meta weights are the
    same on any backend and any number of workers. See :class:`BaseMetaAlgorithm` for the arguments.
    """

    def meta_update(self, results: Iterable[AdaptedResult], outer_step: int) -> None:
        meta_lr = self.get_meta_lr(outer_step)
        params = {
            n: p for n, p in self.meta_policy.named_parameters() if n not in self.ignored_params
        }
        # One buffer per parameter: the adapted weights are summed in place, in task order, and
        # phi is subtracted once at the end, so the driver holds one extra copy of the weights
        # plus the few results in flight.
        sums = {n: th.zeros_like(p) for n, p in params.items()}
        count = 0
        # The results iterator may run inner loops in this process (serial backend): it must not be
        # consumed under no_grad, so only the arithmetic below is.
        for result in results:
            with th.no_grad(), warnings.catch_warnings(), _single_thread():
                warnings.simplefilter("ignore", UserWarning)  # read-only zero-copy arrays from Ray
                for name, param in params.items():
                    sums[name].add_(
                        th.as_tensor(np.asarray(result.weights[name]), device=param.device)
                    )
            count += 1
        if count == 0:
            self._last_update_norm = 0.0
            return
        with th.no_grad(), _single_thread():
            mean_deltas = {n: s.div_(count).sub_(params[n]) for n, s in sums.items()}
            if self.meta_optimizer is None:
                for name, param in params.items():
                    param.add_(mean_deltas[name], alpha=meta_lr)
                self._last_update_norm = meta_lr * _norm(mean_deltas.values())
                return
        self.sync_meta_optimizer_lr(meta_lr)
        before = {n: p.detach().clone() for n, p in params.items()}
        self.meta_optimizer.zero_grad(set_to_none=True)
        for name, param in params.items():
            param.grad = mean_deltas[name].neg_()
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        with th.no_grad():
            self._last_update_norm = _norm(p.sub(before[n]) for n, p in params.items())


@contextmanager
def _single_thread() -> Iterator[None]:
    """Element-wise folds are memory-bound: one torch thread is faster and steadier than several."""
    previous = th.get_num_threads()
    if previous != 1:
        th.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            th.set_num_threads(previous)


def _norm(tensors: Iterable[th.Tensor]) -> float:
    """Euclidean norm over several tensors, accumulated in double without full-size temporaries."""
    return float(
        np.sqrt(sum(float(th.linalg.vector_norm(t, dtype=th.float64)) ** 2 for t in tensors))
    )
