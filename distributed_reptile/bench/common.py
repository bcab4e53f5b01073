"""What every benchmark shares: machine facts, statistics, targets, memory sampling, Ray, reports."""

from __future__ import annotations

import importlib
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import psutil

from distributed_reptile.jsonutil import write_json

#: Folder of the repository's benchmark scripts and reference implementations.
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
REFERENCE_MODULE = "reptile_reference"
MB = 1024 * 1024


class BenchInputError(ValueError):
    """A benchmark option is out of range; the message names the option to change."""


# ---------------------------------------------------------------------- machine and versions
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    """CPU count and model, memory and load: what a reader needs to compare two result files."""
    vm = psutil.virtual_memory()
    return {
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model_name(),
        "memory_total_bytes": int(vm.total),
        "memory_available_bytes": int(vm.available),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def versions() -> dict[str, str]:
    """Versions of the libraries the figures depend on."""
    from distributed_reptile.algorithms.base import library_versions

    return library_versions(extra=("psutil", "matplotlib"))


class CpuMeter:
    """How busy the whole machine was while a benchmark ran (other users' load disturbs figures)."""

    def __init__(self) -> None:
        self._start = psutil.cpu_times()
        self._wall = time.perf_counter()
        self._load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    def summary(self) -> dict[str, Any]:
        """Busy fraction of all CPUs since construction, with load averages at both ends."""
        total, idle = _cpu_total_idle(psutil.cpu_times())
        total0, idle0 = _cpu_total_idle(self._start)
        span, rest = total - total0, idle - idle0
        busy = min(max((span - rest) / span, 0.0), 1.0) if span > 0 else 0.0
        return {
            "wall_seconds": time.perf_counter() - self._wall,
            "machine_busy_fraction": busy,
            "load_average_start": self._load,
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }


def _cpu_total_idle(times: Any) -> tuple[float, float]:
    """All CPU seconds (guest time is already inside user and nice) and the idle ones."""
    fields = times._asdict()
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    return total, fields.get("idle", 0.0) + fields.get("iowait", 0.0)


def tree_cpu_seconds(root: psutil.Process | None = None) -> float:
    """User + system CPU seconds of this process and all its descendants (Ray's processes and
    workers when this process started Ray, ``multiprocessing`` children) so far.

    Unlike wall time, CPU seconds barely change when other work shares the machine, so they show
    what an implementation costs even on a busy machine.
    """
    root = root if root is not None else psutil.Process()
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


# ---------------------------------------------------------------------- statistics
def median(values: Sequence[float]) -> float:
    """Median of ``values`` (NaN when empty)."""
    return float(np.median(values)) if len(values) else float("nan")


def p90(values: Sequence[float]) -> float:
    """90th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(values, 90)) if len(values) else float("nan")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, 90th percentile, min, max and count of ``values``."""
    if not len(values):
        return {
            "median": float("nan"),
            "p90": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "n": 0,
        }
    return {
        "median": median(values),
        "p90": p90(values),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "n": len(values),
    }


def parse_choice_list(text: str, choices: Sequence[str], option: str) -> list[str]:
    """``"a,c"`` -> ``["a", "c"]``, each one of ``choices``, in the order of ``choices``.

    :param option: the option's name, for the error message.
    """
    picked = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [p for p in picked if p not in choices]
    if unknown or not picked:
        raise BenchInputError(
            f"{option} takes a comma-separated list of {', '.join(choices)}; got {text!r}."
        )
    return [c for c in choices if c in picked]


def parse_int_list(text: str, option: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (positive integers; ``1e4`` is accepted).

    :param text: the option's value.
    :param option: the option's name, for the error message.
    """
    try:
        values = [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise BenchInputError(
            f"{option} takes comma-separated positive integers such as '1,2', got {text!r}."
        )
    return values


# ---------------------------------------------------------------------- targets
@dataclass
class Target:
    """A figure checked against a threshold; ``value=None`` means it was not measured in this run.

    :param name: short identifier.
    :param description: what is compared, in words.
    :param value: the measured figure.
    :param op: ``"<="`` or ``">="``.
    :param threshold: the bound.
    :param unit: unit of ``value`` and ``threshold``.
    """

    name: str
    description: str
    value: float | None
    op: str
    threshold: float
    unit: str = ""

    @property
    def status(self) -> str:
        """``"PASS"``, ``"MISS"`` or ``"n/a"`` (not measured)."""
        if self.value is None or not math.isfinite(self.value):
            return "n/a"
        ok = self.value <= self.threshold if self.op == "<=" else self.value >= self.threshold
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        """One printable line: status, description, value against threshold."""
        value = "not measured" if self.value is None else f"{self.value:.4g}"
        return f"[{self.status}] {self.description}: {value} {self.op} {self.threshold:g} {self.unit}".rstrip()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


# ---------------------------------------------------------------------- memory sampling
class RssSampler:
    """Samples the resident memory of a few processes from a background thread (psutil).

    Peaks are kept per label since the last :meth:`mark`, so a caller can bracket one outer step.
    ``rss`` counts every resident page (object-store pages the process touched included);
    ``private`` is ``rss - shared`` (anonymous memory: what the process holds itself).

    :param pids: ``label -> pid`` of the processes to watch.
    :param interval: seconds between samples.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.005) -> None:
        self.interval = interval
        self._procs: dict[str, psutil.Process] = {}
        for label, pid in pids.items():
            try:
                self._procs[label] = psutil.Process(pid)
            except psutil.Error:
                continue
        self._lock = threading.Lock()
        self._peak: dict[str, dict[str, int]] = {}
        self._overall: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.samples = 0

    def _read(self) -> dict[str, dict[str, int]]:
        out = {}
        for label, proc in self._procs.items():
            try:
                mem = proc.memory_info()
            except psutil.Error:
                continue
            out[label] = {"rss": int(mem.rss), "private": int(mem.rss - getattr(mem, "shared", 0))}
        return out

    def _fold(self, now: dict[str, dict[str, int]]) -> None:
        with self._lock:
            for store in (self._peak, self._overall):
                for label, mem in now.items():
                    peak = store.setdefault(label, dict(mem))
                    for key, value in mem.items():
                        peak[key] = max(peak[key], value)
            self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._fold(self._read())

    def __enter__(self) -> RssSampler:
        self._fold(self._read())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._fold(self._read())

    def mark(self) -> dict[str, dict[str, int]]:
        """Current memory of every process; peaks restart from here."""
        now = self._read()
        with self._lock:
            self._peak = {label: dict(mem) for label, mem in now.items()}
        return now

    def peaks(self) -> dict[str, dict[str, int]]:
        """Peak memory per process since the last :meth:`mark` (one sample is taken first)."""
        self._fold(self._read())
        with self._lock:
            return {label: dict(mem) for label, mem in self._peak.items()}

    def overall_peaks(self) -> dict[str, dict[str, int]]:
        """Peak memory per process over the sampler's whole life."""
        with self._lock:
            return {label: dict(mem) for label, mem in self._overall.items()}


# ---------------------------------------------------------------------- Ray
@contextmanager
def ray_running(num_cpus: int | None = None) -> Iterator[dict[str, Any]]:
    """Ray for a benchmark: the instance already initialised in this process, else a local
    loopback-only one (or the cluster of ``RAY_ADDRESS``) that is shut down afterwards.

    Yields ``{"mode": "existing" | "started" | "joined", "init_seconds": float}``.

    :param num_cpus: logical CPUs of a local instance this function starts.
    """
    import ray

    from distributed_reptile.ray_utils import ensure_ray

    t0 = time.perf_counter()
    mode = ensure_ray(num_cpus=num_cpus, ray_init_kwargs={"log_to_driver": False})
    info = {"mode": mode, "init_seconds": time.perf_counter() - t0}
    try:
        yield info
    finally:
        if mode in ("started", "joined"):
            ray.shutdown()


def reference_module() -> ModuleType:
    """The reference implementations kept in the repository's ``benchmarks/`` folder.

    They are plain scripts, not part of the installed package, so ``benchmarks/`` goes on
    ``sys.path`` (spawned ``multiprocessing`` workers inherit it); the module ships its functions
    to Ray workers by value.
    """
    path = BENCHMARKS_DIR / f"{REFERENCE_MODULE}.py"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the reference implementations live in the repository's benchmarks/ "
            "folder. Run the scaling benchmark from a source checkout (pip install -e .)."
        )
    if str(BENCHMARKS_DIR) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS_DIR))
    return importlib.import_module(REFERENCE_MODULE)


# ---------------------------------------------------------------------- reports
def new_report(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The common head of every result file."""
    return {
        "benchmark": name,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "versions": versions(),
        "settings": settings,
    }


def write_report(
    out_dir: str | os.PathLike[str],
    report: dict[str, Any],
    targets: list[Target],
    plot: Callable[[Any], None],
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<benchmark>.json`` and ``<benchmark>.png``; print the target lines.

    :param out_dir: folder of the result files (created).
    :param report: the result, with ``benchmark`` naming the files.
    :param targets: figures checked against their bounds.
    :param plot: draws the figure onto the matplotlib ``Figure`` it is given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = report["benchmark"]
    report["targets"] = [t.to_dict() for t in targets]
    json_path = folder / f"{name}.json"
    png_path = folder / f"{name}.png"
    write_json(json_path, report)
    fig = plt.figure(figsize=(11, 4.5))
    try:
        plot(fig)
        fig.tight_layout()
        fig.savefig(png_path, dpi=110)
    finally:
        plt.close(fig)
    for target in targets:
        print(target.line())
    print(f"wrote {json_path} and {png_path}")
    return json_path, png_path


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as an aligned table; ``columns`` are ``(key, header, format)``."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, fmt) if fmt else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
