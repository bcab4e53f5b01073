"""ReptileMetaRL: phi <- phi + lr * mean_i(phi_i - phi), or the same direction through an optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

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
        sums = {n: th.zeros_like(p) for n, p in params.items()}
        count = 0
        # The results iterator may run inner loops in this process (serial backend): it must not be
        # consumed under no_grad, so only the arithmetic below is.
        for result in results:
            with th.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # read-only zero-copy arrays from Ray
                for name, param in params.items():
                    adapted = th.as_tensor(np.asarray(result.weights[name]), device=param.device)
                    sums[name].add_(adapted - param)
            count += 1
        if count == 0:
            self._last_update_norm = 0.0
            return
        with th.no_grad():
            mean_deltas = {n: s.div_(count) for n, s in sums.items()}
            if self.meta_optimizer is None:
                for name, param in params.items():
                    param.add_(mean_deltas[name], alpha=meta_lr)
                self._last_update_norm = meta_lr * _norm(mean_deltas.values())
                return
        self.sync_meta_optimizer_lr(meta_lr)
        before = {n: p.detach().clone() for n, p in params.items()}
        self.meta_optimizer.zero_grad(set_to_none=True)
        for name, param in params.items():
            param.grad = -mean_deltas[name]
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        with th.no_grad():
            self._last_update_norm = _norm(p - before[n] for n, p in params.items())


def _norm(tensors: Iterable[th.Tensor]) -> float:
    return float(np.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors)))
