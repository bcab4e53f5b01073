"""Meta-learning algorithms: the outer loop (base), first-order arithmetic, and Reptile."""

from distributed_reptile.algorithms.base import (
    BaseMetaAlgorithm,
    NonFiniteWeightsError,
    load_trainer,
)
from distributed_reptile.algorithms.first_order import FirstOrderMetaAlgorithm, WeightSum
from distributed_reptile.algorithms.reptile import ReptileMetaRL

__all__ = [
    "BaseMetaAlgorithm",
    "FirstOrderMetaAlgorithm",
    "NonFiniteWeightsError",
    "ReptileMetaRL",
    "WeightSum",
    "load_trainer",
]
