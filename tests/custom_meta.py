"""A second first-order method, written against FirstOrderMetaAlgorithm: the whole file it takes.

Reptile with tasks weighted by the return seen while adapting: ``phi <- phi + lr * delta`` with
``delta = sum_i w_i (phi_i - phi) / sum_i w_i`` and ``w_i = 1 + max(mean return_i, 0) / scale``.
``combine = "sum"``: each worker weighs the tasks it ran and sends one exact partial sum per call.
"""

from __future__ import annotations

import numpy as np

from distributed_reptile import AdaptedResult, FirstOrderMetaAlgorithm


class ReturnWeightedReptile(FirstOrderMetaAlgorithm):
    combine = "sum"
    scale = 50.0

    @classmethod
    def task_weight(cls, result: AdaptedResult) -> float:
        returns = result.episode_returns
        mean = float(np.mean(returns)) if returns else 0.0
        return 1.0 + max(mean, 0.0) / cls.scale
