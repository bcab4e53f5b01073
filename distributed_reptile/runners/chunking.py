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

Which worker runs which tasks never changes the result: every task's adapted weights depend only
on the task and the meta weights, and the partial sums are exact (see
:mod:`distributed_reptile.reduction`).
"""

from __future__ import annotations

#: Calls in flight at the start of a guided batch, per worker and queued call: each carries
#: ``1 / (GUIDED_SPREAD x pipeline_depth x workers)`` of the tasks not yet handed out.
GUIDED_SPREAD = 2
#: The smallest guided call carries ``1 / GUIDED_MIN_SHARE`` of a worker's even share (at least 1
#: task), which bounds the calls of a large batch.
GUIDED_MIN_SHARE = 8


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class ChunkPlan:
    """The sizes of one batch's actor calls.

    :param tasks_per_call: an int >= 1 (every call carries that many), ``"auto"`` (the batch split
        evenly over ``workers``, one call each) or ``"guided"`` (see the module's text).
    :param batch_size: tasks in the batch.
    :param workers: workers of the pool.
    :param pipeline_depth: calls queued per worker at once.
    """

    def __init__(
        self, tasks_per_call: int | str, batch_size: int, workers: int, pipeline_depth: int
    ) -> None:
        self.tasks_per_call = tasks_per_call
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers))
        self.pipeline_depth = max(1, int(pipeline_depth))
        #: The fewest tasks a call carries (but the last, which takes what is left).
        self.smallest = 1
        if tasks_per_call == "guided":
            self.smallest = _ceil_div(self.batch_size, GUIDED_MIN_SHARE * self.workers)
        elif tasks_per_call == "auto":
            self.smallest = _ceil_div(self.batch_size, self.workers)
        else:
            self.smallest = int(tasks_per_call)
        #: The most tasks a call carries (the first call of a full batch).
        self.largest = self.next(self.batch_size, self.workers)

    def next(self, pending: int, workers_up: int) -> int:
        """Tasks of the next call when ``pending`` tasks are not yet handed out and
        ``workers_up`` workers are up (at least 1, at most ``pending``)."""
        size = self.smallest
        if self.tasks_per_call == "guided":
            spread = GUIDED_SPREAD * self.pipeline_depth * max(1, workers_up)
            size = max(size, _ceil_div(pending, spread))
        return max(1, min(size, pending))

    def sizes(self) -> list[int]:
        """The calls of the whole batch with every worker up and no task failing."""
        out: list[int] = []
        pending = self.batch_size
        while pending > 0:
            out.append(self.next(pending, self.workers))
            pending -= out[-1]
        return out
