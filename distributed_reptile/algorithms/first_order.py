"""The arithmetic first-order methods share: sum adapted weights in task order, then apply a mean
delta to the meta policy directly or through the meta-optimizer.

A first-order method is a :class:`FirstOrderMetaAlgorithm` whose ``meta_update`` decides how much
each task counts and hands the result to :meth:`FirstOrderMetaAlgorithm.apply_mean_delta`; see
:class:`~distributed_reptile.ReptileMetaRL` (every task counts once).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch as th

from distributed_reptile.algorithms.base import BaseMetaAlgorithm


class WeightSum:
    """A running sum of adapted weights, one buffer per meta parameter, added in task order.

    The driver holds one extra copy of the weights plus the few results in flight, whatever the
    number of tasks.

    :param params: the meta parameters (name -> tensor) the sum covers.
    """

    def __init__(self, params: Mapping[str, th.Tensor]) -> None:
        self.params = dict(params)
        self.sums = {n: th.zeros_like(p) for n, p in self.params.items()}
        self.count = 0
        self.total_weight = 0.0

    def add(self, weights: Mapping[str, np.ndarray], weight: float = 1.0) -> None:
        """Add one task's adapted weights, counted ``weight`` times."""
        with th.no_grad(), warnings.catch_warnings(), single_thread():
            warnings.simplefilter("ignore", UserWarning)  # read-only zero-copy arrays from Ray
            for name, param in self.params.items():
                value = th.as_tensor(np.asarray(weights[name]), device=param.device)
                if weight == 1.0:
                    self.sums[name].add_(value)
                else:
                    self.sums[name].add_(value, alpha=weight)
        self.count += 1
        self.total_weight += weight

    def mean_delta(self) -> dict[str, th.Tensor]:
        """``sum_i w_i phi_i / sum_i w_i - phi`` per parameter (the buffers are reused)."""
        if self.count == 0 or self.total_weight == 0:
            raise ValueError("mean_delta() needs at least one task of positive weight.")
        divisor = self.count if self.total_weight == self.count else self.total_weight
        with th.no_grad(), single_thread():
            return {n: s.div_(divisor).sub_(self.params[n]) for n, s in self.sums.items()}


class FirstOrderMetaAlgorithm(BaseMetaAlgorithm):
    """Base of first-order methods: subclasses compute a mean delta, this class applies it.

    ``meta_update`` of a subclass typically reads::

        sums = WeightSum(self.meta_params())
        for result in results:
            sums.add(result.weights, weight=...)
        self.apply_mean_delta(sums.mean_delta() if sums.count else None, self.get_meta_lr(outer_step))
    """

    def meta_params(self) -> dict[str, th.nn.Parameter]:
        """The meta policy's parameters that the update moves (``ignored_layers`` left out)."""
        return {
            n: p for n, p in self.meta_policy.named_parameters() if n not in self.ignored_params
        }

    def apply_mean_delta(self, mean_delta: Mapping[str, th.Tensor] | None, meta_lr: float) -> None:
        """``phi <- phi + meta_lr * mean_delta``, or an optimizer step with gradient
        ``-mean_delta`` when ``use_meta_optimizer``; ``None`` (no task kept) changes nothing.
        Sets :attr:`last_update_norm`."""
        if mean_delta is None:
            self.last_update_norm = 0.0
            return
        params = self.meta_params()
        if self.meta_optimizer is None:
            with th.no_grad(), single_thread():
                for name, param in params.items():
                    param.add_(mean_delta[name], alpha=meta_lr)
                self.last_update_norm = meta_lr * norm(mean_delta.values())
            return
        self.sync_meta_optimizer_lr(meta_lr)
        before = {n: p.detach().clone() for n, p in params.items()}
        self.meta_optimizer.zero_grad(set_to_none=True)
        for name, param in params.items():
            param.grad = mean_delta[name].neg()
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        with th.no_grad():
            self.last_update_norm = norm(p.sub(before[n]) for n, p in params.items())


@contextmanager
def single_thread() -> Iterator[None]:
    """Element-wise folds are memory-bound: one torch thread is faster and steadier than several."""
    previous = th.get_num_threads()
    if previous != 1:
        th.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            th.set_num_threads(previous)


def norm(tensors: Iterable[th.Tensor]) -> float:
    """Euclidean norm over several tensors, accumulated in double without full-size temporaries."""
    return float(
        np.sqrt(sum(float(th.linalg.vector_norm(t, dtype=th.float64)) ** 2 for t in tensors))
    )


__all__ = ["FirstOrderMetaAlgorithm", "WeightSum", "norm", "single_thread"]
