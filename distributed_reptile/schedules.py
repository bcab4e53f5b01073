"""Meta learning-rate schedules: ``lr = schedule(step, total_steps)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

LRSchedule = float | Callable[[int, int], float]


@dataclass(frozen=True)
class ConstantSchedule:
    """The same meta learning rate at every outer step."""

    value: float

    def __call__(self, step: int, total_steps: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class LinearSchedule:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step ``total_steps``)."""

    start: float
    end: float

    def __call__(self, step: int, total_steps: int) -> float:
        frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
        return float(self.start + frac * (self.end - self.start))


def constant_schedule(value: float) -> ConstantSchedule:
    return ConstantSchedule(float(value))


def linear_schedule(start: float, end: float) -> LinearSchedule:
    return LinearSchedule(float(start), float(end))


def normalize_lr_schedule(meta_lr: LRSchedule) -> Callable[[int, int], float]:
    """Turn a float or a callable ``(step, total_steps) -> lr`` into a callable schedule."""
    if isinstance(meta_lr, bool):
        raise TypeError(
            "meta_lr must be a float or a callable (step, total_steps) -> lr, not a bool."
        )
    if isinstance(meta_lr, int | float):
        return ConstantSchedule(float(meta_lr))
    if callable(meta_lr):
        return meta_lr
    raise TypeError(
        f"meta_lr must be a float or a callable (step, total_steps) -> lr, got {type(meta_lr).__name__}. "
        "Use distributed_reptile.linear_schedule(start, end) for a linear schedule."
    )
