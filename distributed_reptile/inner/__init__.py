"""The inner loop: one task's SB3 learning, usable in-process and inside Ray actors."""

from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob

__all__ = ["AdaptedResult", "InnerLearner", "TaskJob"]
