"""Where a trainer's step records go, so that a long run stays bounded.

Three places, each of a size that does not grow with the number of outer steps except the file:

- :class:`RecentRecords`: the newest ``keep_records`` records in memory (``trainer.step_records``,
  1000 by default), a list-like window: ``records[-1]``, ``records[5:]``, ``len(records)``. Its
  index 0 is the oldest record kept, outer step ``records[0].outer_step``, which is outer step 1
  only while the run has made no more than ``keep_records`` steps.
- :class:`StepTotals`: running totals over the whole run (outer steps, env steps, tasks, seconds,
  tasks per node per session), the only step figures a checkpoint holds (``trainer.step_totals``).
- the step-records file: an append-only JSON-lines file, one line per outer step, written as the
  steps are made (each line is flushed, so a killed run keeps the lines of its finished steps). A
  checkpoint at outer step ``K`` is written after line ``K``.

:class:`StepHistory` holds the three and is what a trainer keeps (``trainer.step_history``).
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from distributed_reptile.checkpoint import disk_full_error
from distributed_reptile.jsonutil import dumps
from distributed_reptile.records import StepRecord

#: Step records a trainer keeps in memory unless ``learn(keep_records=...)`` says otherwise.
KEEP_RECORDS = 1000
#: The step record's figures whose sums :class:`StepTotals` keeps.
SUMMED_SECONDS = (
    "step_seconds",
    "sample_seconds",
    "wait_seconds",
    "meta_update_seconds",
    "inner_seconds",
)


class RecentRecords(Sequence[StepRecord]):
    """The newest ``maxlen`` step records, oldest first: a bounded window that indexes and slices
    like a list (a slice is a new list)."""

    def __init__(self, records: Iterable[StepRecord] = (), maxlen: int = KEEP_RECORDS) -> None:
        self._records: deque[StepRecord] = deque(records, maxlen=_check_keep(maxlen))

    @property
    def maxlen(self) -> int:
        return self._records.maxlen or 0

    def resize(self, maxlen: int) -> None:
        """Keep at most ``maxlen`` records from now on (the oldest go first)."""
        if maxlen != self.maxlen:
            self._records = deque(self._records, maxlen=_check_keep(maxlen))

    def append(self, record: StepRecord) -> None:
        self._records.append(record)

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self._records)

    @overload
    def __getitem__(self, index: int) -> StepRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[StepRecord]: ...

    def __getitem__(self, index: int | slice) -> StepRecord | list[StepRecord]:
        if isinstance(index, slice):
            return list(self._records)[index]
        return self._records[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecentRecords | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecentRecords({len(self)} of at most {self.maxlen})"


def _check_keep(maxlen: int) -> int:
    if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen <= 0:
        raise ValueError(f"keep_records must be a positive integer, got {maxlen!r}.")
    return maxlen


@dataclass
class SessionTotals:
    """What one session ran: a session is one trainer object (built, or loaded from a checkpoint)
    and so one cluster; node ids of different sessions name nodes of different Ray instances.

    :param first_outer_step: the session's first outer step (1-based).
    """

    first_outer_step: int
    outer_steps: int = 0
    tasks_per_node: dict[str, int] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return len(self.tasks_per_node)


@dataclass
class StepTotals:
    """Running totals of a run's step records: what resume and the summaries need, of a size that
    does not grow with the number of outer steps (the checkpoint keeps these, not the records).

    ``sessions`` holds one entry per trainer object that ran steps (a resumed run adds one), in
    order; ``sessions[-1]`` is the current one once it has run a step.
    """

    outer_steps: int = 0
    env_steps: int = 0
    #: Tasks drawn, revisits among them, tasks left out (non-finite weights), reruns and
    #: worker changes, and episodes finished while adapting.
    tasks: int = 0
    revisits: int = 0
    skipped_tasks: int = 0
    retries: int = 0
    episodes: int = 0
    #: Sums of the records' ``step_seconds``, ``sample_seconds``, ``wait_seconds``,
    #: ``meta_update_seconds`` and ``inner_seconds``.
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUMMED_SECONDS, 0.0))
    #: Sums and counts of the per-task timings (``env_build``, ``learn``, ``round_trip``...).
    task_seconds: dict[str, float] = field(default_factory=dict)
    task_timing_counts: dict[str, int] = field(default_factory=dict)
    #: The last record's ``ep_return_mean`` (NaN before the first step, or when no episode ended).
    last_ep_return_mean: float = float("nan")
    last_outer_step: int = 0
    sessions: list[SessionTotals] = field(default_factory=list)
    #: Whether this object's own session is in ``sessions`` (it is added at its first step).
    session_started: bool = field(default=False, repr=False, compare=False)

    def add(self, record: StepRecord) -> None:
        """Count one more outer step."""
        if not self.session_started:
            self.sessions.append(SessionTotals(record.outer_step))
            self.session_started = True
        self.outer_steps += 1
        self.env_steps += int(record.env_steps)
        self.tasks += len(record.tasks)
        self.revisits += int(record.revisits)
        self.skipped_tasks += len(record.skipped_tasks)
        self.retries += len(record.retries)
        self.episodes += int(record.episodes)
        for key in SUMMED_SECONDS:
            self.seconds[key] = self.seconds.get(key, 0.0) + float(record[key])
        for timings in record.task_timings:
            for key, value in timings.items():
                self.task_seconds[key] = self.task_seconds.get(key, 0.0) + float(value)
                self.task_timing_counts[key] = self.task_timing_counts.get(key, 0) + 1
        self.last_ep_return_mean = float(record.ep_return_mean)
        self.last_outer_step = int(record.outer_step)
        session = self.sessions[-1]
        session.outer_steps += 1
        _merge_into(session.tasks_per_node, record.tasks_per_node)

    @property
    def current(self) -> SessionTotals | None:
        """This trainer object's session (``None`` before its first step)."""
        return self.sessions[-1] if self.session_started else None

    @property
    def tasks_per_node(self) -> dict[str, int]:
        """Tasks per node summed over every session (node ids of several clusters mixed)."""
        out: dict[str, int] = {}
        for session in self.sessions:
            _merge_into(out, session.tasks_per_node)
        return out

    def task_mean_seconds(self, key: str) -> float | None:
        """Mean of a per-task timing over the run (``None`` when no task reported it)."""
        count = self.task_timing_counts.get(key, 0)
        return self.task_seconds[key] / count if count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "outer_steps": self.outer_steps,
            "env_steps": self.env_steps,
            "tasks": self.tasks,
            "revisits": self.revisits,
            "skipped_tasks": self.skipped_tasks,
            "retries": self.retries,
            "episodes": self.episodes,
            "seconds": dict(self.seconds),
            "task_seconds": dict(self.task_seconds),
            "task_timing_counts": dict(self.task_timing_counts),
            "last_ep_return_mean": self.last_ep_return_mean,
            "last_outer_step": self.last_outer_step,
            "sessions": [
                {
                    "first_outer_step": s.first_outer_step,
                    "outer_steps": s.outer_steps,
                    "tasks_per_node": dict(s.tasks_per_node),
                }
                for s in self.sessions
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepTotals:
        """Totals read back from a checkpoint (their session is over: a new one starts)."""
        last = data.get("last_ep_return_mean")
        totals = cls(
            seconds={**dict.fromkeys(SUMMED_SECONDS, 0.0), **data.get("seconds", {})},
            task_seconds=dict(data.get("task_seconds", {})),
            task_timing_counts=dict(data.get("task_timing_counts", {})),
            last_ep_return_mean=float(last) if isinstance(last, int | float) else float("nan"),
            sessions=[
                SessionTotals(
                    int(s["first_outer_step"]),
                    int(s.get("outer_steps", 0)),
                    {str(k): int(v) for k, v in s.get("tasks_per_node", {}).items()},
                )
                for s in data.get("sessions", [])
            ],
        )
        for name in _COUNTS:
            setattr(totals, name, int(data.get(name, 0)))
        return totals

    @classmethod
    def of_records(cls, records: Iterable[Mapping[str, Any]]) -> StepTotals:
        """Totals of whole step records, counted as one session (the current one)."""
        totals = cls()
        for record in records:
            totals.add(record if isinstance(record, StepRecord) else StepRecord.from_dict(record))
        return totals


_COUNTS = (
    "outer_steps",
    "env_steps",
    "tasks",
    "revisits",
    "skipped_tasks",
    "retries",
    "episodes",
    "last_outer_step",
)


def totals_of_state(state: Mapping[str, Any]) -> StepTotals:
    """The step totals a checkpoint's ``trainer_state.json`` holds, or derives from the step
    records a checkpoint written before totals holds."""
    legacy = state.get("step_records")
    if isinstance(legacy, list):
        totals = StepTotals.of_records(r for r in legacy if isinstance(r, Mapping))
        totals.session_started = False  # that session is over: a new one starts
        return totals
    return StepTotals.from_dict(state.get("step_totals") or {})


def _merge_into(out: dict[str, int], counts: Mapping[str, int]) -> None:
    for key, n in counts.items():
        out[key] = out.get(key, 0) + int(n)


_KEPT = "a line cut short is dropped when the run resumes"
_OUTER_STEP = re.compile(rb'^\{"outer_step": (\d+)[,}]')


def _line_step(line: bytes) -> int | None:
    """The outer step of a complete line of the file (``None``: a partial or unreadable line)."""
    if not line.endswith(b"\n"):
        return None
    match = _OUTER_STEP.match(line)
    if match is not None:
        return int(match.group(1))
    try:
        step = json.loads(line).get("outer_step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _lines_up_to(path: Path, done_steps: int) -> Iterator[tuple[int, bytes]]:
    """``(end offset, line)`` of the file's lines up to outer step ``done_steps``, stopping at the
    first line past it (or partial, or unreadable, or out of order)."""
    offset, last = 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            step = _line_step(line)
            if step is None or step > done_steps or step <= last:
                return
            offset += len(line)
            last = step
            yield offset, line


class StepHistory:
    """A trainer's step records: the newest in memory, the totals, and the file (see the module
    docstring).

    :param keep_records: step records kept in memory.
    """

    def __init__(self, keep_records: int = KEEP_RECORDS) -> None:
        self.recent = RecentRecords(maxlen=keep_records)
        self.totals = StepTotals()
        #: The step-records file this trainer writes (``None``: none).
        self.path: Path | None = None
        self._pending: list[StepRecord] = []
        self._written = -1  # outer step of the file's last line, when this object wrote it
        self._source: Path | None = None  # the file the restored checkpoint names
        self._legacy: list[dict[str, Any]] = []  # records of a checkpoint written before totals

    # ------------------------------------------------------------------ one run
    def reset(self) -> None:
        """Forget every step (a run that starts over); the objects handed out before
        (``step_records``, ``step_totals``) keep what they held."""
        self.recent = RecentRecords(maxlen=self.recent.maxlen)
        self.totals = StepTotals()
        self._pending.clear()
        self._written = -1
        self._source, self._legacy = None, []

    def start(
        self, path: str | os.PathLike[str] | None, done_steps: int, keep_records: int | None = None
    ) -> None:
        """Get the file ready for a ``learn`` call that continues after outer step ``done_steps``.

        ``path`` becomes the file the following steps are appended to. ``None`` means, when the
        run continues (``done_steps > 0``), the file this object has been writing, else the one
        the restored checkpoint names; for a run that starts over, no file.

        Lines of outer steps after ``done_steps`` that the file already holds (written by an
        interrupted run after the checkpoint it resumes from), and a last line cut short, are
        **truncated**: a resumed run adds each step once, as a line after the earlier ones. A
        file that does not exist yet is started with the lines up to ``done_steps`` of the file
        the restored checkpoint names (a resume into a new run folder), or with the step
        records of a checkpoint written before totals.
        """
        if keep_records is not None:
            self.recent.resize(keep_records)
        self._pending.clear()
        if path is None and done_steps > 0:
            path = self.path or self._source
        if path is None:
            self.path = None
            return
        target = Path(path).expanduser().resolve()
        if target == self.path and self._written == done_steps:
            return  # the file this object has been writing, up to this step
        self.path = target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                kept = deque(_lines_up_to(target, done_steps), maxlen=1)
                with open(target, "r+b") as fh:
                    fh.truncate(kept[0][0] if kept else 0)
            else:
                with open(target, "wb") as fh:
                    for line in self._earlier_lines(done_steps):
                        fh.write(line)
        except OSError as exc:
            full = disk_full_error(exc, target, "starting the step-records file", kept=_KEPT)
            if full is None:
                raise
            raise full from exc
        self._written = done_steps

    def _earlier_lines(self, done_steps: int) -> Iterator[bytes]:
        source = self._source
        if source is not None and source.exists() and source != self.path:
            yield from (line for _, line in _lines_up_to(source, done_steps))
        else:
            for record in self._legacy:
                if int(record.get("outer_step", 0)) <= done_steps:
                    yield (dumps(record) + "\n").encode("utf-8")

    def add(self, record: StepRecord) -> None:
        """One more outer step: kept in memory, counted, and queued for the file (written by
        :meth:`flush`, once the callbacks have added their keys)."""
        self.recent.append(record)
        self.totals.add(record)
        if self.path is not None:
            self._pending.append(record)

    def flush(self) -> None:
        """Append the queued records to the file, a line each, and flush it to the system."""
        if not self._pending or self.path is None:
            self._pending.clear()
            return
        text = "".join(dumps(r) + "\n" for r in self._pending)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            full = disk_full_error(exc, self.path, "writing step records to", kept=_KEPT)
            if full is None:
                raise
            raise full from exc
        self._written = self._pending[-1].outer_step
        self._pending.clear()

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the totals and the file's path (not the records)."""
        return {
            "step_totals": self.totals.to_dict(),
            "step_records_file": str(self.path) if self.path is not None else None,
        }

    def restore(self, state: Mapping[str, Any], folder: Path, done_steps: int) -> None:
        """Take the totals of checkpoint ``folder`` (``state`` is its ``trainer_state.json``),
        and the newest records up to ``done_steps`` from the file it names, if it is there.

        A checkpoint written before totals holds the step records themselves: the totals are
        derived from them, and they go to a new file as its first lines.
        """
        self.reset()
        self.path = None
        legacy = state.get("step_records")
        if isinstance(legacy, list):
            self._legacy = [dict(r) for r in legacy if isinstance(r, Mapping)]
            self.totals = totals_of_state(state)
            for record in self._legacy:
                self.recent.append(StepRecord.from_dict(record))
            return
        self.totals = totals_of_state(state)
        self._source = _recorded_file(state, folder)
        if self._source is not None:
            tail: deque[bytes] = deque(maxlen=self.recent.maxlen)
            tail.extend(line for _, line in _lines_up_to(self._source, done_steps))
            for line in tail:
                self.recent.append(StepRecord.from_dict(json.loads(line)))


def _recorded_file(state: Mapping[str, Any], folder: Path) -> Path | None:
    """The step-records file a checkpoint names: by its path relative to the checkpoint's parent
    folder (the run folder may have moved), else by its absolute path."""
    relative, absolute = state.get("step_records_file_relative"), state.get("step_records_file")
    for candidate in (
        folder.parent / relative if isinstance(relative, str) else None,
        Path(absolute) if isinstance(absolute, str) else None,
    ):
        if candidate is not None and candidate.is_file():
            return candidate.resolve()
    return None


__all__ = [
    "KEEP_RECORDS",
    "RecentRecords",
    "SessionTotals",
    "StepHistory",
    "StepTotals",
    "totals_of_state",
]
