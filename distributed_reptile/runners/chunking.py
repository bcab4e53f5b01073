"""How many tasks each actor call of a batch carries (``tasks_per_call``).

Each actor call costs the driver about a millisecond whatever it carries (Ray's submission, the
reply, the book-keeping), so at hundreds of short tasks per outer step one task per call spends
more on dispatch than the tasks take. Calls that carry many tasks cost little, but a worker holds
all the tasks of its calls: with the batch split evenly over the workers (``"auto"``), one slow
worker delays the step by its whole share.

``"guided"`` is guided self-scheduling (Polychronopoulos and Kuck, 1987, as OpenMP's
``schedule(guided)``): each call carries a fixed fraction of the tasks not yet handed out,
``ceil(pending / (GUIDED_SPREAD x pipeline_depth x workers))``, never fewer than
``ceil(batch / (GUIDED_MIN_SHARE x workers))``. Early calls are large and few; the calls shrink as
the batch runs out, so the last ones, which decide when the step ends, are small and go to
whichever worker is free. A worker's queued calls (``pipeline_depth`` of them) hold at most about
``1 / GUIDED_SPREAD`` of its even share at the start, and less later. The number of calls grows with
the workers and only logarithmically with the tasks: at 1024 tasks on 8 workers, 54 calls against
1024 with one task per call and 8 with ``"auto"``.

Workers are not all as fast (other jobs on a node, older machines in the cluster): a guided call
is also scaled by its worker's speed relative to the others (:class:`WorkerSpeeds`: tasks per
second of inner-loop time, measured on the worker's earlier calls and kept across outer steps), so
a worker half as fast gets calls half as large, and holds about as much time's worth of tasks as
the others (weighted factoring, Hummel, Schmidt, Uma and Wein, 1996). A worker not yet measured
counts as average.

Which worker runs which tasks never changes the result: every task's adapted weights depend only
on the task and the meta weights, and the partial sums are exact (see
:mod:`distributed_reptile.reduction`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Calls in flight at the start of a guided batch, per worker and queued call: each carries
#: ``1 / (GUIDED_SPREAD x pipeline_depth x workers)`` of the tasks not yet handed out.
GUIDED_SPREAD = 2
#: The smallest guided call carries ``1 / GUIDED_MIN_SHARE`` of a worker's even share (at least 1
#: task), which bounds the calls of a large batch.
GUIDED_MIN_SHARE = 8


#: Weight of the newest call in a worker's measured speed (an exponential average).
SPEED_SMOOTHING = 0.5
#: A guided call is scaled by its worker's relative speed, clipped to this range.
SPEED_WEIGHT_RANGE = (1 / 16, 2.0)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class WorkerSpeeds:
    """Each worker's speed, tasks per second of inner-loop time (the learners' ``timings``), an
    exponential average over its calls; kept by the runner across batches."""

    def __init__(self) -> None:
        self.speeds: dict[int, float] = {}

    def observe(self, worker: int, results: Sequence[Any]) -> None:
        """Take in the results of one call of ``worker`` (objects with ``timings["total"]``)."""
        seconds = sum(float(r.timings.get("total", 0.0)) for r in results)
        if not results or seconds <= 0:
            return
        speed = len(results) / seconds
        old = self.speeds.get(worker)
        self.speeds[worker] = (
            speed if old is None else SPEED_SMOOTHING * speed + (1 - SPEED_SMOOTHING) * old
        )

    def forget(self, worker: int) -> None:
        """``worker`` is a new process: not measured yet."""
        self.speeds.pop(worker, None)

    def weight(self, worker: int, workers_up: Sequence[int]) -> float:
        """``worker``'s speed over the mean speed of the measured workers in ``workers_up`` (1 when
        it or they are not measured), clipped to :data:`SPEED_WEIGHT_RANGE`."""
        known = [self.speeds[w] for w in workers_up if w in self.speeds]
        if worker not in self.speeds or not known:
            return 1.0
        low, high = SPEED_WEIGHT_RANGE
        return min(high, max(low, self.speeds[worker] * len(known) / sum(known)))


class ChunkPlan:
    """The sizes of one batch's actor calls.

    :param tasks_per_call: an int >= 1 (every call carries that many), ``"auto"`` (the batch split
        evenly over ``workers``, one call each) or ``"guided"`` (see the module's text).
    :param batch_size: tasks in the batch.
    :param workers: workers of the pool.
    :param pipeline_depth: calls queued per worker at once.
    :param speeds: the workers' measured speeds, which scale guided calls (``None``: all alike).
    """

    def __init__(
        self,
        tasks_per_call: int | str,
        batch_size: int,
        workers: int,
        pipeline_depth: int,
        speeds: WorkerSpeeds | None = None,
    ) -> None:
        self.speeds = speeds
        self.tasks_per_call = tasks_per_call
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers))
        self.pipeline_depth = max(1, int(pipeline_depth))
        if tasks_per_call == "guided":
            smallest = _ceil_div(self.batch_size, GUIDED_MIN_SHARE * self.workers)
        elif tasks_per_call == "auto":
            smallest = _ceil_div(self.batch_size, self.workers)
        else:
            smallest = int(tasks_per_call)
        #: The fewest tasks a call carries (but the last, which takes what is left).
        self.smallest = smallest
        #: The tasks of a batch's first call, the workers alike.
        self.largest = self._size(self.batch_size, self.workers, 1.0)
        #: The most tasks a call may carry (a guided call to a worker faster than the others is
        #: larger than the first).
        self.most = self.largest
        if speeds is not None and tasks_per_call == "guided":
            self.most = self._size(self.batch_size, self.workers, SPEED_WEIGHT_RANGE[1])

    def next(self, pending: int, workers_up: Sequence[int], worker: int | None = None) -> int:
        """Tasks of the next call, to ``worker``, when ``pending`` tasks are not yet handed out
        and the workers ``workers_up`` are up (at least 1, at most ``pending``)."""
        weight = 1.0
        if self.speeds is not None and worker is not None and self.tasks_per_call == "guided":
            weight = self.speeds.weight(worker, workers_up)
        return self._size(pending, len(workers_up), weight)

    def _size(self, pending: int, workers_up: int, weight: float) -> int:
        size = self.smallest
        if self.tasks_per_call == "guided":
            spread = GUIDED_SPREAD * self.pipeline_depth * max(1, workers_up)
            size = max(math.ceil(size * min(weight, 1.0)), math.ceil(pending * weight / spread))
        return max(1, min(size, pending))

    def calls(self) -> int:
        """How many calls :meth:`sizes` makes (counted without listing them unless guided)."""
        if self.tasks_per_call == "guided":
            return len(self.sizes())
        return _ceil_div(self.batch_size, self.smallest)

    def sizes(self) -> list[int]:
        """The calls of the whole batch with every worker up, all alike, and no task failing."""
        out: list[int] = []
        pending = self.batch_size
        while pending > 0:
            out.append(self._size(pending, self.workers, 1.0))
            pending -= out[-1]
        return out
