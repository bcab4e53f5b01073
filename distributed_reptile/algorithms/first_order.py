"""The arithmetic first-order methods share: an exact sum of per-task contributions (or a sum of
adapted weights in task order), then a mean delta applied to the meta policy directly or through
the meta-optimizer.

A first-order method is a :class:`FirstOrderMetaAlgorithm`. One whose update is a weighted mean
of per-task terms declares ``combine = "sum"`` and says how much each task counts
(:meth:`~FirstOrderMetaAlgorithm.task_weight`) or what it contributes
(:meth:`~FirstOrderMetaAlgorithm.task_contribution`): the workers fold each actor call's tasks
into one exact partial sum (:mod:`distributed_reptile.reduction`) and the driver receives one
weight-sized array per call, not per task. See :class:`~distributed_reptile.ReptileMetaRL`
(every task counts once). A method that needs every task's adapted weights at the driver keeps
``combine = "all"`` and writes ``meta_update`` over the results (e.g. with :class:`WeightSum`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch as th

from distributed_reptile.algorithms.base import BaseMetaAlgorithm
from distributed_reptile.algorithms.results import COMBINE_MODES, NonFiniteWeightsError
from distributed_reptile.inner.learner import AdaptedResult
from distributed_reptile.reduction import (
    Contribution,
    FixedSum,
    TaskReducer,
    delta_contribution,
    on_grid,
)
from distributed_reptile.weights import NumpyWeights


class WeightSum:
    """A running sum of adapted weights, one buffer per meta parameter, added in task order
    (float arithmetic: the result depends on the order; for ``combine = "all"`` methods).

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
    """Base of first-order methods: the mean of per-task contributions, applied to the meta policy.

    The default :meth:`meta_update` moves the meta policy by ``meta_lr`` times
    ``sum_i w_i (phi_i - phi) / sum_i w_i``, summed exactly (:mod:`distributed_reptile.reduction`),
    with ``w_i`` from :meth:`task_weight` (1 unless overridden). With ``combine = "sum"`` (as
    :class:`~distributed_reptile.ReptileMetaRL` declares) the workers compute each task's term
    and send one partial sum per actor call; with ``combine = "all"`` (the default) every task's
    weights come to the driver, which computes the same terms: the same bits either way.

    A method that needs more than a weighted mean keeps ``combine = "all"`` and writes its own
    ``meta_update`` over the results, in task order, for instance::

        sums = WeightSum(self.meta_params())
        for result in results:
            sums.add(result.weights, weight=...)
        self.apply_mean_delta(sums.mean_delta() if sums.count else None, self.get_meta_lr(outer_step))
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.combine not in COMBINE_MODES:
            raise TypeError(
                f"{cls.__name__}.combine is {cls.combine!r}; it must be one of {COMBINE_MODES}."
            )

    def meta_params(self) -> dict[str, th.nn.Parameter]:
        """The meta policy's parameters that the update moves (``ignored_layers`` left out)."""
        return {
            n: p for n, p in self.meta_policy.named_parameters() if n not in self.ignored_params
        }

    # ------------------------------------------------------------------ per-task contributions
    @classmethod
    def task_weight(cls, result: AdaptedResult) -> float:
        """How much one task counts in the mean (default 1), from its statistics
        (``result.episode_returns``, ``env_steps``, ``task``...; not its weights). With
        ``combine = "sum"`` it runs on the worker: it may read class attributes, not the trainer."""
        return 1.0

    @classmethod
    def task_contribution(
        cls, adapted: NumpyWeights, meta: NumpyWeights, result: AdaptedResult
    ) -> Contribution:
        """One task's term of the sum: ``w * (phi_i - phi)`` in float64 with weight ``w``
        (:meth:`task_weight`, rounded to the sum's grid). ``adapted`` and ``meta`` hold the
        parameters the update moves. With ``combine = "sum"`` it runs on the worker."""
        weight = on_grid(cls.task_weight(result))
        values = delta_contribution(adapted, meta, result).values
        if weight != 1.0:
            for v in values.values():
                np.multiply(v, weight, out=v)
        return Contribution(values, weight)

    def task_reducer(self) -> TaskReducer:
        """What the workers fold each task with: the parameters the update moves and
        :meth:`task_contribution` (the plain delta when neither it nor :meth:`task_weight` is
        overridden, so the workers need not import this class)."""
        cls = type(self)
        plain = all(
            getattr(cls, n).__func__ is getattr(FirstOrderMetaAlgorithm, n).__func__
            for n in ("task_weight", "task_contribution")
        )
        contribution = delta_contribution if plain else ClassContribution(cls)
        return TaskReducer(tuple(self.meta_params()), contribution)

    def summed(self, results: Iterable[AdaptedResult]) -> FixedSum:
        """The exact sum of the tasks' contributions, reading ``results`` to the end: merged from
        the workers' partial sums (a step's stream with ``combine = "sum"``), or computed here from
        each result's adapted weights. Same bits either way, in any order.

        :raises NonFiniteWeightsError: a result's adapted weights hold NaN or infinity (results
            from the trainer's own stream were checked already).
        """
        total = getattr(results, "total", None)
        if isinstance(total, FixedSum):
            for _ in results:
                pass  # the stream merges each call's partial sum as its results pass
            return total
        reducer = self.task_reducer()
        meta = {n: p.detach().cpu().numpy() for n, p in self.meta_params().items()}
        total = FixedSum()
        for result in results:
            bad = reducer.fold(total, result, meta)
            if bad:
                raise NonFiniteWeightsError(
                    f"Task meta_step={result.meta_step} has non-finite adapted weights in {bad[:5]}."
                )
        return total

    def mean_delta_of(self, total: FixedSum) -> dict[str, th.Tensor] | None:
        """The mean of an exact sum, cast to each parameter's dtype and device (``None`` when no
        task was kept). ``total`` is finished on the way (:meth:`FixedSum.finish`: its means
        replace its integer sums)."""
        found = self._mean_and_norm(total)
        return None if found is None else found[0]

    def _mean_and_norm(self, total: FixedSum) -> tuple[dict[str, th.Tensor], float] | None:
        """:meth:`mean_delta_of`, and the Euclidean norm of the float64 means. The means come
        from :meth:`FixedSum.finish` (made here, or already by the worker of a node-reduced
        step's last combine: one piece of arithmetic, so the same bits either way); they are
        read in place when they lie in the object store (they are only read), and the norm adds
        the squares in the parameters' order."""
        if total.count == 0:
            return None
        params = self.meta_params()
        covered = set(total.names)
        missing = [n for n in params if n not in covered]
        if missing:
            raise ValueError(f"The tasks' contributions leave out parameters {missing[:5]}.")
        if total.means is None:
            total.finish(n for n, p in params.items() if p.dtype == th.float32)
        if total.means is None or total.squares is None:  # (finish leaves a zero weight alone)
            raise ValueError("mean() needs at least one task and a nonzero total weight.")
        out: dict[str, th.Tensor] = {}
        squares = 0.0
        for n, p in params.items():
            mean = total.means[n]
            if mean.dtype != (np.float32 if p.dtype == th.float32 else np.float64):
                raise ValueError(
                    f"The mean of parameter {n!r} arrived as {mean.dtype} for a {p.dtype} "
                    "parameter."
                )
            squares += total.squares[n]
            with warnings.catch_warnings():  # a read-only view: torch warns, nothing writes it
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tensor = th.from_numpy(mean)
            out[n] = tensor.to(device=p.device, dtype=p.dtype)
        return out, float(np.sqrt(squares))

    def meta_update(self, results: Iterable[AdaptedResult], outer_step: int) -> None:
        """``phi <- phi + meta_lr * sum_i w_i (phi_i - phi) / sum_i w_i`` (see the class)."""
        meta_lr = self.get_meta_lr(outer_step)
        # The results iterator may run inner loops in this process (serial backend): it is not
        # consumed under no_grad.
        found = self._mean_and_norm(self.summed(results))
        if found is None:
            self.apply_mean_delta(None, meta_lr)
        else:
            self.apply_mean_delta(found[0], meta_lr, delta_norm=found[1])

    def apply_mean_delta(
        self,
        mean_delta: Mapping[str, th.Tensor] | None,
        meta_lr: float,
        *,
        delta_norm: float | None = None,
    ) -> None:
        """``phi <- phi + meta_lr * mean_delta``, or an optimizer step with gradient
        ``-mean_delta`` when ``use_meta_optimizer``; ``None`` (no task kept) changes nothing.
        Sets :attr:`last_update_norm` (from ``delta_norm``, the norm of ``mean_delta``, when the
        caller has it)."""
        if mean_delta is None:
            self.last_update_norm = 0.0
            return
        params = self.meta_params()
        if self.meta_optimizer is None:
            with th.no_grad(), single_thread():
                for name, param in params.items():
                    param.add_(mean_delta[name], alpha=meta_lr)
                if delta_norm is None:
                    delta_norm = norm(mean_delta.values())
                self.last_update_norm = meta_lr * delta_norm
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


@dataclass(frozen=True)
class ClassContribution:
    """``algorithm.task_contribution`` as a picklable callable (the class travels by name)."""

    algorithm: type[FirstOrderMetaAlgorithm]

    def __call__(
        self, adapted: NumpyWeights, meta: NumpyWeights, result: AdaptedResult
    ) -> Contribution:
        return self.algorithm.task_contribution(adapted, meta, result)


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


__all__ = [
    "ClassContribution",
    "FirstOrderMetaAlgorithm",
    "WeightSum",
    "norm",
    "single_thread",
]
