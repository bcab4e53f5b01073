"""ReptileMetaRL: phi <- phi + lr * mean_i(phi_i - phi), or the same direction through an optimizer."""

from __future__ import annotations

from typing import ClassVar, Literal

from distributed_reptile.algorithms.first_order import FirstOrderMetaAlgorithm


class ReptileMetaRL(FirstOrderMetaAlgorithm):
    """Reptile (first-order meta-learning) over SB3 inner learners.

    Without a meta-optimizer: ``phi <- phi + lr(o) * (1/B) * sum_i (phi_i - phi)`` over the meta
    policy's named parameters, skipping those matched by ``ignored_layers``. With
    ``use_meta_optimizer=True``: an optimizer step with gradient ``-(1/B) * sum_i (phi_i - phi)``.

    ``combine = "sum"``: each worker computes ``phi_i - phi`` (float64) for the tasks it ran and
    sends one exact fixed-point partial sum per actor call
    (:mod:`distributed_reptile.reduction`); the driver adds the partial sums as integers and takes
    the mean (with node reduction, the worker that combines the step's last sums takes it, by the
    same arithmetic). Integer sums do not depend on order or grouping, so the meta weights are the
    same bit for bit on any backend, any number of workers and any ``tasks_per_call``, with or
    without reruns. See :class:`BaseMetaAlgorithm` for the arguments.
    """

    combine: ClassVar[Literal["all", "sum"]] = "sum"
