"""A second first-order method, written against FirstOrderMetaAlgorithm: the whole file it takes.

Reptile with tasks weighted by the return seen while adapting: ``phi <- phi + lr * delta`` with
``delta = sum_i w_i phi_i / sum_i w_i - phi`` and ``w_i = 1 + max(mean return_i, 0) / scale``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from distributed_reptile import AdaptedResult, FirstOrderMetaAlgorithm, WeightSum


class ReturnWeightedReptile(FirstOrderMetaAlgorithm):
    scale = 50.0

    def meta_update(self, results: Iterable[AdaptedResult], outer_step: int) -> None:
        meta_lr = self.get_meta_lr(outer_step)
        sums = WeightSum(self.meta_params())
        for result in results:
            returns = result.episode_returns
            mean = float(np.mean(returns)) if returns else 0.0
            sums.add(result.weights, weight=1.0 + max(mean, 0.0) / self.scale)
        self.apply_mean_delta(sums.mean_delta() if sums.count else None, meta_lr)
