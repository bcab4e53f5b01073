"""ReptileMetaRL: phi <- phi + lr * mean_i(phi_i - phi), or the same direction through an optimizer."""

from __future__ import annotations

from collections.abc import Iterable

from distributed_reptile.algorithms.first_order import FirstOrderMetaAlgorithm, WeightSum
from distributed_reptile.inner.learner import AdaptedResult


class ReptileMetaRL(FirstOrderMetaAlgorithm):
    """Reptile (first-order meta-learning) over SB3 inner learners.

    Without a meta-optimizer: ``phi <- phi + lr(o) * (1/B) * sum_i (phi_i - phi)`` over the meta
    policy's named parameters, skipping those matched by ``ignored_layers``. With
    ``use_meta_optimizer=True``: an optimizer step with gradient ``-(1/B) * sum_i (phi_i - phi)``.
    The sum runs in task order whatever the order results arrived in, so the meta weights are the
    same on any backend and any number of workers. See :class:`BaseMetaAlgorithm` for the arguments.
    """

    def meta_update(self, results: Iterable[AdaptedResult], outer_step: int) -> None:
        meta_lr = self.get_meta_lr(outer_step)
        sums = WeightSum(self.meta_params())
        # The results iterator may run inner loops in this process (serial backend): it is not
        # consumed under no_grad; only the additions are.
        for result in results:
            sums.add(result.weights)
        self.apply_mean_delta(sums.mean_delta() if sums.count else None, meta_lr)
