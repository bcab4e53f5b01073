"""Exact, order-independent sums of per-task contributions, in fixed point.

A method whose meta-update is a (weighted) mean of per-task terms, Reptile's
``mean_i (phi_i - phi)`` for one, has each term computed where the task ran, converted to
integers, and summed as integers. Integer addition is associative and commutative, so the sum,
and the mean made from it, is the same bit for bit whatever the order in which tasks finish,
however they are grouped into actor calls, workers or nodes, and whether a call was rerun. A
worker sends one partial sum per call (:class:`FixedSum`, one int64 array per parameter) instead
of one set of adapted weights per task.

Arithmetic, per task ``i`` and parameter (:meth:`FixedSum.add`):

* the contribution ``c_i`` (Reptile: ``delta_i = phi_i - phi``, computed in float64 from the
  float32 values, times the task's weight ``w_i``) becomes ``q_i = rint(c_i * 2**S)`` as int64;
* the weight becomes ``rint(w_i * 2**S)`` (a Python int: exact at any size);
* the mean is ``sum_i q_i / (sum_i w_i) / 2**S`` in float64 (with every weight 1,
  ``sum / kept_count / 2**S``), cast to the parameter's dtype by the caller.

**Why S = 40** (:data:`FRACTION_BITS`):

* Resolution ``2**-40 ~ 9.1e-13``. Each task's term is rounded by at most ``2**-41``, so the
  mean is off by at most ``2**-41`` from the float64 mean of the same terms (plus float64's own
  rounding of the division). A float32 weight ``x`` has a spacing of ``2**-23 |x|`` or so: for
  ``|x| >= 2**-17 ~ 7.6e-6`` the fixed-point error is below half of it, i.e. below what casting
  the mean to float32 and adding it to the weights rounds anyway. Mean deltas smaller than
  ``~1e-5`` keep an absolute accuracy of ``2**-41`` (relative ``2**-41 / |mean|``).
* The float64 conversion loses nothing more: a float64 term below ``2**13`` in magnitude holds
  its ``2**-40`` digits exactly (53 significant bits), and a larger one is already a multiple of
  ``2**-40``. ``phi_i - phi`` in float64 is exact for any two float32 values within a factor
  ``2**29`` of each other (always, in practice).
* Range: int64 holds ``2**63``, i.e. ``2**23 = 8,388,608`` in units of the term. The sum of the
  tasks' largest ``|w_i * delta_i|`` per parameter must stay below that: for example 1,024 tasks
  moving a weight by up to 8,192 each, or 100,000 tasks by up to 83. Inner loops that move
  weights that far have diverged. Beyond it, :class:`SumOverflowError` names the parameter,
  the largest ``|delta|`` and the fix; nothing wraps around.

Overflow is ruled out before any addition, and in a way that does not depend on order: each
array carries the sum over its tasks of their largest ``|q_i|`` (:attr:`FixedSum.bounds`), and an
addition whose bound would reach ``2**63`` is refused. Whether a run is refused therefore depends
only on the tasks, not on how their sums were grouped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distributed_reptile.weights import NumpyWeights, non_finite_names

if TYPE_CHECKING:
    from distributed_reptile.inner.learner import AdaptedResult

#: Binary digits after the point: a term ``c`` is held as the integer ``rint(c * 2**40)``.
FRACTION_BITS = 40
#: The largest integer an int64 partial sum may reach (the bounds are checked against it).
INT_LIMIT = 2**63 - 1
#: The largest magnitude, in the terms' own units, that a sum over all tasks may reach (2**23).
RANGE = INT_LIMIT / 2.0**FRACTION_BITS

_FIX = (
    "Lower the inner learning rate (or clip gradients with max_grad_norm) so the adapted weights "
    "stay nearer the meta weights, or use fewer tasks per outer step (task_batch_size)."
)


class SumOverflowError(ValueError):
    """A contribution, or a sum of contributions, exceeds what the fixed-point sum can hold.

    A ``ValueError``: running the task again gives the same numbers, so it is not retried.
    """


@dataclass
class Contribution:
    """One task's term of a sum: float64 values per parameter and the task's weight.

    The mean the sums give is ``sum_i values_i / sum_i weight_i``: a weighted method returns
    ``values = w_i * delta_i`` and ``weight = w_i``.
    """

    values: dict[str, np.ndarray]
    weight: float = 1.0


#: ``contribution(adapted, meta, result)``: the term of one finished task, from its adapted
#: parameters, the meta weights it started from (both restricted to the parameters summed) and
#: its statistics (``result.episode_returns``, ``result.env_steps``, ``result.task``...).
ContributionFn = Callable[[NumpyWeights, NumpyWeights, "AdaptedResult"], Contribution]


def on_grid(weight: float) -> float:
    """``weight`` rounded to the fixed-point grid (``2**-40``), as a float64 that the sum holds
    exactly: a weighted term computed with it matches its weight."""
    return float(np.ldexp(np.rint(np.ldexp(float(weight), FRACTION_BITS)), -FRACTION_BITS))


def weight_to_fixed(weight: float, task: str = "") -> int:
    """A task's weight as the integer ``rint(weight * 2**40)``."""
    w = float(weight)
    if not math.isfinite(w) or abs(w) >= RANGE:
        raise ValueError(
            f"Task weight of {task or 'a task'} is {w!r}: it must be finite, below {RANGE:g}."
        )
    return int(np.rint(np.ldexp(w, FRACTION_BITS)))


def to_fixed(values: np.ndarray, name: str, task: str = "") -> tuple[np.ndarray, int]:
    """``rint(values * 2**40)`` as int64, and the largest magnitude in it (checked first).

    :raises SumOverflowError: a value is too large to convert (the message names ``name``).
    :raises ValueError: a value is NaN or infinite.
    """
    v = np.asarray(values, dtype=np.float64)
    peak = max(float(v.max()), -float(v.min())) if v.size else 0.0
    if not math.isfinite(peak):
        raise ValueError(
            f"The contribution of {task or 'a task'} to parameter {name!r} is NaN or infinite."
        )
    if peak >= RANGE:
        raise SumOverflowError(
            f"Parameter {name!r}: {task or 'a task'} moved it by up to |delta| = {peak:.6g} "
            f"(times its weight), beyond what the exact fixed-point sum holds ({RANGE:.6g}). {_FIX}"
        )
    scaled = np.empty(v.shape, dtype=np.float64)
    np.ldexp(v, FRACTION_BITS, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64), int(np.rint(np.ldexp(peak, FRACTION_BITS)))


class FixedSum:
    """An exact sum of task contributions: one int64 array per parameter, the tasks kept and
    their total weight. Sums of disjoint sets of tasks :meth:`merge` into the same bits in any
    order or grouping.

    :attr bounds: per parameter, the sum over the tasks of their largest ``|q_i|``: no partial
        sum of these tasks, in any grouping, can exceed it.
    :attr peaks: per parameter, the largest ``|c_i|`` of a single task (for messages).
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.bounds: dict[str, int] = {}
        self.peaks: dict[str, float] = {}
        # Arrays taken from another sum as they were (a read-only view of the object store, say):
        # never written to; the next addition makes a new array instead of adding in place.
        self._borrowed: set[str] = set()
        #: Tasks in the sum.
        self.count = 0
        #: Their total weight, as the integer ``sum_i rint(w_i * 2**40)``.
        self.weight = 0
        #: Set by :meth:`finish`: the means, in float32 for the parameters named there and
        #: float64 for the others, in place of the integer sums.
        self.means: dict[str, np.ndarray] | None = None
        #: Set by :meth:`finish`: each parameter's ``sum(mean**2)`` in float64 (before the cast).
        self.squares: dict[str, float] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled from another process, the arrays may be read-only views of the object store
        state.setdefault("means", None)
        state.setdefault("squares", None)
        self.__dict__.update(state)
        self._borrowed = set(self.sums)

    @property
    def names(self) -> list[str]:
        """The parameters the sum covers, in the order of its first contribution."""
        return list(self.means if self.means is not None else self.sums)

    def finish(self, float32: Iterable[str]) -> None:
        """Replace the integer sums by the means the meta-update needs, where the sum is (the
        last worker to combine a step's sums, so that the driver receives half the bytes and
        does not spend the time): per parameter, :meth:`mean_of`; its ``sum(mean**2)`` in
        float64 (for the norm of the update); then the mean cast to float32 for the parameters
        in ``float32`` (NumPy's cast rounds as torch's does). The same functions on the same
        integers: the same bits as when the driver makes them. A finished sum cannot take more
        tasks (:meth:`merge` refuses). The driver's meta-update makes its means here too, unless
        the worker did. No-op for a sum of no task or of total weight zero (the driver reports
        those).
        """
        if self.means is not None or self.count == 0 or self.weight == 0:
            return
        cast = set(float32)
        means: dict[str, np.ndarray] = {}
        squares: dict[str, float] = {}
        for name in list(self.sums):
            mean = self.mean_of(name)
            flat = mean.reshape(-1)
            squares[name] = float(np.einsum("i,i->", flat, flat))  # (one thread, unlike BLAS)
            means[name] = mean.astype(np.float32) if name in cast else mean
            del self.sums[name]  # (one float64 temporary at a time)
        self.means, self.squares = means, squares
        self._borrowed.clear()

    def add(self, contribution: Contribution, task: str = "") -> None:
        """Add one task's contribution (``task`` names it in error messages)."""
        weight = weight_to_fixed(contribution.weight, task)
        parts: dict[str, tuple[np.ndarray, int]] = {}
        peaks: dict[str, float] = {}
        for name, values in contribution.values.items():
            q, bound = to_fixed(values, name, task)
            parts[name] = (q, bound)
            peaks[name] = np.ldexp(float(bound), -FRACTION_BITS)
        self._accumulate(parts, peaks, 1, weight, owned=True)

    def merge(self, other: FixedSum) -> None:
        """Add the sum of other tasks (``other`` is left as it was; a sum merged into an empty
        one shares its arrays until the next addition, which writes new ones: no copy is made
        of a sum that is only read)."""
        if other.count == 0:
            return
        if other.means is not None:  # adopted whole by an empty sum (the step's stream)
            if self.count or self.means is not None:
                raise ValueError("A finished sum (means, no integer sums) cannot be added to.")
            self.means, self.squares = other.means, other.squares
            self.bounds, self.peaks = dict(other.bounds), dict(other.peaks)
            self.count, self.weight = other.count, other.weight
            return
        parts = {n: (s, other.bounds[n]) for n, s in other.sums.items()}
        self._accumulate(parts, other.peaks, other.count, other.weight, owned=False)

    def _accumulate(
        self,
        parts: Mapping[str, tuple[np.ndarray, int]],
        peaks: Mapping[str, float],
        count: int,
        weight: int,
        owned: bool,
    ) -> None:
        if self.means is not None:
            raise ValueError("A finished sum (means, no integer sums) cannot be added to.")
        if self.count and parts.keys() != self.sums.keys():
            raise ValueError(
                f"Contributions cover different parameters: {sorted(parts)} and {sorted(self.sums)}."
            )
        for name, (array, bound) in parts.items():  # every check before any change
            total = self.bounds.get(name, 0) + bound
            if total > INT_LIMIT:
                peak = max(self.peaks.get(name, 0.0), peaks[name])
                raise SumOverflowError(
                    f"Parameter {name!r}: the tasks' largest |delta| (times weight) add up to "
                    f"{np.ldexp(float(total), -FRACTION_BITS):.6g} over {self.count + count} tasks "
                    f"(largest |delta| of one task: {peak:.6g}), beyond what the exact fixed-point "
                    f"sum holds ({RANGE:.6g}). {_FIX}"
                )
            if name in self.sums and array.shape != self.sums[name].shape:
                raise ValueError(
                    f"Parameter {name!r} has shape {array.shape} in one contribution and "
                    f"{self.sums[name].shape} in another."
                )
        for name, (array, bound) in parts.items():
            if name in self._borrowed:
                self.sums[name] = np.add(self.sums[name], array)
                self._borrowed.discard(name)
            elif name in self.sums:
                np.add(self.sums[name], array, out=self.sums[name])
            else:
                # a sum received from another process may be a read-only view: not written to
                self.sums[name] = array
                if not owned:
                    self._borrowed.add(name)
            self.bounds[name] = self.bounds.get(name, 0) + bound
            self.peaks[name] = max(self.peaks.get(name, 0.0), peaks[name])
        self.count += count
        self.weight += weight

    def mean(self) -> dict[str, np.ndarray]:
        """``sum_i c_i / sum_i w_i`` per parameter, in float64 (see :meth:`mean_of`)."""
        return {n: self.mean_of(n) for n in self.sums}

    def mean_of(self, name: str) -> np.ndarray:
        """``sum_i c_i / sum_i w_i`` of one parameter in float64: ``sum / kept_count / 2**S``
        when every weight is 1. One parameter at a time keeps a single float64 temporary.

        :raises ValueError: no task in the sum, or a total weight of zero.
        """
        if self.count == 0 or self.weight == 0:
            raise ValueError("mean() needs at least one task and a nonzero total weight.")
        if self.means is not None:
            raise ValueError("A finished sum holds its means already (FixedSum.means).")
        divisor = self.weight / 2**FRACTION_BITS  # exactly the task count when every weight is 1
        # ``ldexp(float64(sum) / divisor, -40)`` in two passes (a cast, then a division in
        # place): dividing by ``divisor * 2**40`` (an exact product) rounds to the same bits as
        # dividing by ``divisor`` then scaling by 2**-40 (a power of two commutes with rounding;
        # no quotient here comes near the subnormal or overflow ranges)
        out = np.empty(self.sums[name].shape, dtype=np.float64)
        out[...] = self.sums[name]
        np.divide(out, divisor * 2.0**FRACTION_BITS, out=out)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (what a partial sum costs to send)."""
        arrays = self.means if self.means is not None else self.sums
        return int(sum(s.nbytes for s in arrays.values()))

    @classmethod
    def of(cls, sums: Iterable[FixedSum]) -> FixedSum:
        """The sum of several partial sums."""
        total = cls()
        for part in sums:
            total.merge(part)
        return total


def delta_contribution(
    adapted: NumpyWeights, meta: NumpyWeights, result: AdaptedResult
) -> Contribution:
    """Reptile's term: ``phi_i - phi`` in float64, weight 1."""
    return Contribution(
        {n: np.asarray(np.subtract(a, meta[n], dtype=np.float64)) for n, a in adapted.items()}
    )


@dataclass(frozen=True)
class TaskReducer:
    """What a worker needs to fold finished tasks into one partial sum: the parameters summed
    and the algorithm's per-task contribution. Small and picklable: it travels with each call.

    :param names: the parameters summed (the meta parameters the update moves).
    :param contribution: one task's term (see :data:`ContributionFn`).
    """

    names: tuple[str, ...]
    contribution: ContributionFn = field(default=delta_contribution)

    def fold(self, partial: FixedSum, result: AdaptedResult, meta: Mapping[str, Any]) -> list[str]:
        """Add ``result``'s contribution to ``partial``, unless an adapted weight is NaN or
        infinite: then nothing is added and the names of those weights are returned."""
        bad = non_finite_names(result.weights)
        if bad:
            return bad
        missing = [n for n in self.names if n not in result.weights or n not in meta]
        if missing:
            raise ValueError(
                f"Task meta_step={result.meta_step} returned no adapted values for {missing[:5]}: "
                "the learner must send back every parameter of the meta policy."
            )
        adapted = {n: result.weights[n] for n in self.names}
        start = {n: meta[n] for n in self.names}
        contribution = self.contribution(adapted, start, result)
        partial.add(contribution, task=f"task meta_step={result.meta_step}")
        return []

    def reduce(self, results: list[AdaptedResult], meta: Mapping[str, Any]) -> None:
        """Fold one call's finished tasks into one partial sum, in place: each result loses its
        weights and names its non-finite ones (``nonfinite``); the first carries the sum."""
        partial = FixedSum()
        for result in results:
            self.reduce_one(partial, result, meta)
        if results:
            results[0].partial = partial

    def reduce_one(self, partial: FixedSum, result: AdaptedResult, meta: Mapping[str, Any]) -> None:
        """Fold one finished task into ``partial`` and drop its weights (see :meth:`reduce`)."""
        result.nonfinite = self.fold(partial, result, meta)
        result.weights = {}


__all__ = [
    "FRACTION_BITS",
    "INT_LIMIT",
    "RANGE",
    "Contribution",
    "ContributionFn",
    "FixedSum",
    "SumOverflowError",
    "TaskReducer",
    "delta_contribution",
    "on_grid",
    "to_fixed",
    "weight_to_fixed",
]
