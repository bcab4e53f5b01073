"""The sine-wave regression check of the Reptile paper (Figure 1), run through the trainer.

* :mod:`~distributed_reptile.sine.env`: the tasks (``make_sine_task``, :class:`SineTaskEnv`);
* :mod:`~distributed_reptile.sine.learner`: :class:`SupervisedRegressor`, an SB3-like supervised
  learner that :class:`~distributed_reptile.ReptileMetaRL` accepts as ``rl_algorithm``;
* :mod:`~distributed_reptile.sine.run`: ``python -m distributed_reptile.sine --output DIR``.
"""

from distributed_reptile.sine.env import SineTaskEnv, make_sine_task
from distributed_reptile.sine.learner import MlpRegressorPolicy, NumpyAdam, SupervisedRegressor

__all__ = [
    "MlpRegressorPolicy",
    "NumpyAdam",
    "SineTaskEnv",
    "SupervisedRegressor",
    "make_sine_task",
]
