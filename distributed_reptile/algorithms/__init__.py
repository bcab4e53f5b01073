"""Meta-learning algorithms: the outer loop (base) and the Reptile update."""

from distributed_reptile.algorithms.base import BaseMetaAlgorithm, NonFiniteWeightsError
from distributed_reptile.algorithms.reptile import ReptileMetaRL

__all__ = ["BaseMetaAlgorithm", "NonFiniteWeightsError", "ReptileMetaRL"]
