"""Helpers shared by the built-in task families."""

from __future__ import annotations

import numpy as np

#: The splits every family accepts.
SPLITS = ("train", "test")

#: What to install for the MuJoCo-based families (HalfCheetah, Meta-World).
MUJOCO_INSTALL_HINT = 'pip install "distributed-reptile[mujoco]"'

Ranges = dict[str, tuple[float, float]]


def check_split(split: str) -> str:
    """Return ``split`` if it is ``"train"`` or ``"test"``, raise ``ValueError`` otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return split


def sample_uniform(rng: np.random.Generator, ranges: Ranges) -> dict[str, float]:
    """One value per parameter, uniform in its ``(low, high)`` range (in the dict's order)."""
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether the closed intervals ``a`` and ``b`` share a point."""
    return max(a[0], b[0]) <= min(a[1], b[1])


def mujoco_import_error(
    what: str, needs: str = "MuJoCo", exc: BaseException | None = None
) -> ImportError:
    """The ``ImportError`` raised when a MuJoCo family is used without its extra installed."""
    cause = f" ({exc})" if exc is not None else ""
    return ImportError(
        f"{what} require {needs}, but the import failed{cause}. "
        f"Install the extra with: {MUJOCO_INSTALL_HINT}"
    )
