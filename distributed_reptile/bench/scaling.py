"""Scaling: seconds per outer step of the serial and Ray backends and of two reference
implementations, for several worker counts, measured side by side in one invocation.

For each worker count ``k`` the implementations take turns, one outer step each per round (the
order rotates every round), so a disturbance on a shared machine hits them all alike. One warm-up
step per implementation is left out; trainer construction, Ray start and actor start are timed
separately.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from distributed_reptile.bench.common import (
    BenchInputError,
    CpuMeter,
    Target,
    median,
    new_report,
    parse_int_list,
    print_table,
    ray_running,
    reference_module,
    summarize,
    tree_cpu_seconds,
    write_report,
)
from distributed_reptile.bench.workload import Workload, add_workload_arguments, workload_from_args

NAME = "scaling"
IMPLEMENTATIONS = ("serial", "ray", "pool", "ray_remote")
#: Also accepted by ``--implementations`` (not run by default): ``ray_flat``, the Ray backend with
#: every task's adapted weights sent to the driver (``combine = "all"``) instead of one partial sum
#: per actor call, to compare the two paths in the same run.
CHOICES = (*IMPLEMENTATIONS, "ray_flat")


class _Trainer:
    """A ReptileMetaRL trainer driven one outer step at a time."""

    def __init__(self, label: str, workload: Workload, backend: str, workers: int) -> None:
        from distributed_reptile import ReptileMetaRL
        from distributed_reptile.bench.cluster_driver import FlatReptile

        self.label = label
        self.workers = workers
        t0 = time.perf_counter()
        cls = FlatReptile if label == "ray_flat" else ReptileMetaRL
        self.meta = cls(**workload.trainer_kwargs(backend, num_workers=workers))
        self.construct_seconds = time.perf_counter() - t0
        info = getattr(self.meta.runner, "worker_info", [{"pid": os.getpid()}])
        self.worker_nice = process_niceness([w["pid"] for w in info])

    def step(self) -> int:
        self.meta.learn(outer_steps=self.meta.num_outer_steps + 1, reset_num_timesteps=False)
        return int(self.meta.step_records[-1]["env_steps"])

    def close(self) -> None:
        self.meta.close()


class _ReferenceLoop:
    """One of the reference implementations in ``benchmarks/reptile_reference.py``."""

    def __init__(
        self, label: str, workload: Workload, workers: int, factory: Callable[..., Any]
    ) -> None:
        from stable_baselines3 import PPO

        from distributed_reptile.tasks.families import make_cartpole_task

        ref = reference_module()
        self.label = label
        self.workers = workers
        self.workload = workload
        t0 = time.perf_counter()
        self.impl = factory(
            ref.ReferenceWorkload(
                task_callable=make_cartpole_task,
                rl_algorithm=PPO,
                rl_algo_kwargs=workload.rl_algo_kwargs(),
                inner_steps=workload.inner_steps,
                meta_lr=workload.meta_lr,
            ),
            workers,
            workload.seed,
        )
        self.construct_seconds = time.perf_counter() - t0
        pool = getattr(self.impl, "pool", None)
        pids = [p.pid for p in getattr(pool, "_pool", [])]
        self.worker_nice = process_niceness(pids) if pids else None

    def step(self) -> int:
        b = self.workload.task_batch_size
        first = 1000 + self.impl.steps_done * b
        tasks = self.impl.outer_step(list(range(first, first + b)))
        return tasks * self.workload.inner_steps

    def close(self) -> None:
        self.impl.close()


def process_niceness(pids: list[int]) -> list[int | None]:
    """The nice value of each process (Ray starts its workers at 15 unless ``RAY_worker_niceness``
    says otherwise; on a shared machine that decides how much CPU they get)."""
    out: list[int | None] = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).nice())
        except psutil.Error:
            out.append(None)
    return out


def _time_step(impl: Any) -> tuple[float, int, float]:
    """Wall seconds, env steps and CPU seconds (this process tree) of one outer step."""
    cpu0 = tree_cpu_seconds()
    t0 = time.perf_counter()
    env_steps = impl.step()
    wall = time.perf_counter() - t0
    return wall, env_steps, tree_cpu_seconds() - cpu0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scaling benchmark; returns the report (also written to ``args.out_dir``)."""
    workers_list = parse_int_list(args.workers, "--workers")
    implementations = [i.strip() for i in args.implementations.split(",") if i.strip()]
    unknown = sorted(set(implementations) - set(CHOICES))
    if unknown or not implementations:
        raise BenchInputError(
            f"--implementations takes a comma-separated subset of {CHOICES}, got {unknown}."
        )
    if args.outer_steps <= 0:
        raise BenchInputError(f"--outer-steps must be a positive integer, got {args.outer_steps}.")
    workload = workload_from_args(args)
    ref = reference_module() if {"pool", "ray_remote"} & set(implementations) else None
    b = workload.task_batch_size
    settings = {
        "workers": workers_list,
        "implementations": implementations,
        "measured_outer_steps": args.outer_steps,
        "warmup_outer_steps": 1,
        "workload": workload.describe(),
        "order": "rounds: one outer step of each implementation per round, order rotated every round",
        "serial": "ReptileMetaRL(backend='serial'): the same InnerLearner in this process, model reused",
        "ray": "ReptileMetaRL(backend='ray', num_workers=k): long-lived actors, model reused",
        "ray_flat": "the same with combine='all' (every task's adapted weights to the driver, "
        "which sums them exactly itself) instead of one int64 partial sum per actor call",
        "pool": "benchmarks/reptile_reference.py PoolReference: multiprocessing.Pool(k), spawn, "
        "torch 1 thread, a fresh PPO per task",
        "cpu_seconds": "user + system CPU seconds of this process and its descendants during each "
        "step (the local Ray instance this run started, its workers, Pool children): on a busy "
        "machine wall time stretches but CPU seconds per task barely move; a joined cluster's "
        "processes are not counted",
        "worker_nice": "nice value of each worker process (Ray's default for its workers is 15; "
        "RAY_worker_niceness in the environment of the process that starts Ray changes it)",
        "ray_worker_niceness_env": os.environ.get("RAY_worker_niceness"),
        "ray_remote": "benchmarks/reptile_reference.py RayRemoteReference: a ray.remote call per task, "
        "a fresh PPO per task, at most k in flight",
    }
    report = new_report(NAME, settings)
    meter = CpuMeter()
    groups: list[dict[str, Any]] = []
    serial: _Trainer | None = None
    serial_warm = False
    num_cpus = 2 * max(workers_list) + 1
    with ray_running(num_cpus=num_cpus) as ray_info:
        report["ray"] = {**ray_info, "num_cpus_requested": num_cpus}
        try:
            if "serial" in implementations:
                serial = _Trainer("serial", workload, "serial", 1)
            for k in workers_list:
                impls: list[Any] = []
                try:
                    for label in ("ray", "ray_flat"):
                        if label in implementations:
                            impls.append(_Trainer(label, workload, "ray", k))
                    if ref is not None and "pool" in implementations:
                        impls.append(_ReferenceLoop("pool", workload, k, ref.PoolReference))
                    if ref is not None and "ray_remote" in implementations:
                        impls.append(
                            _ReferenceLoop("ray_remote", workload, k, ref.RayRemoteReference)
                        )
                    group = _run_group(
                        k, serial, impls, args.outer_steps, warm_serial=not serial_warm
                    )
                    serial_warm = True
                finally:
                    for impl in impls:
                        impl.close()
                groups.append(group)
                print(
                    f"workers={k}: "
                    + ", ".join(
                        f"{label} {g['seconds_per_outer_step']['median']:.2f}s"
                        for label, g in group["implementations"].items()
                    )
                )
        finally:
            if serial is not None:
                serial.close()
    report["cpu"] = meter.summary()
    rows = summarize_groups(groups, b, workload.inner_steps)
    report["groups"] = groups
    report["rows"] = rows
    targets = scaling_targets(groups)
    print_table(
        rows,
        [
            ("workers", "k", "d"),
            ("implementation", "impl", ""),
            ("seconds_per_outer_step", "s/step", ".3f"),
            ("tasks_per_second", "tasks/s", ".3f"),
            ("env_steps_per_second", "env steps/s", ".0f"),
            ("speedup_vs_serial", "speedup", ".3f"),
            ("parallel_efficiency", "efficiency", ".3f"),
            ("construct_seconds", "start s", ".2f"),
            ("warmup_seconds", "warm-up s", ".2f"),
            ("cpu_seconds_per_task", "CPU s/task", ".3f"),
            ("cpu_vs_serial", "CPU vs serial", ".3f"),
            ("busy_cores", "busy cores", ".2f"),
        ],
    )
    write_report(args.out_dir, report, targets, lambda fig: plot(fig, report))
    return report


def _run_group(
    k: int, serial: _Trainer | None, impls: list[Any], steps: int, warm_serial: bool
) -> dict[str, Any]:
    """Warm up, then ``steps`` rounds of one outer step per implementation."""
    members: list[Any] = ([serial] if serial is not None else []) + impls
    warmup: dict[str, float] = {}
    for impl in members:
        if impl is serial and not warm_serial:
            continue
        warmup[impl.label], _, _ = _time_step(impl)
    times: dict[str, list[float]] = {impl.label: [] for impl in members}
    cpu: dict[str, list[float]] = {impl.label: [] for impl in members}
    env_steps: dict[str, list[int]] = {impl.label: [] for impl in members}
    for r in range(steps):
        shift = r % len(members)
        for impl in members[shift:] + members[:shift]:
            seconds, steps_done, cpu_seconds = _time_step(impl)
            times[impl.label].append(seconds)
            cpu[impl.label].append(cpu_seconds)
            env_steps[impl.label].append(steps_done)
    out: dict[str, Any] = {"workers": k, "implementations": {}}
    for impl in members:
        out["implementations"][impl.label] = {
            "workers": 1 if impl is serial else k,
            "construct_seconds": impl.construct_seconds,
            "worker_nice": impl.worker_nice,
            "warmup_seconds": warmup.get(impl.label),
            "step_seconds": times[impl.label],
            "env_steps_per_outer_step": env_steps[impl.label],
            "seconds_per_outer_step": summarize(times[impl.label]),
            "cpu_seconds": cpu[impl.label],
            "cpu_seconds_per_outer_step": summarize(cpu[impl.label]),
        }
    return out


def summarize_groups(
    groups: list[dict[str, Any]], tasks: int, inner_steps: int
) -> list[dict[str, Any]]:
    """Throughput, speedup against the serial backend of the same rounds, parallel efficiency,
    and CPU seconds per task (this process tree), which a busy machine barely changes."""
    rows = []
    for group in groups:
        impls = group["implementations"]
        serial_s = (
            impls["serial"]["seconds_per_outer_step"]["median"] if "serial" in impls else None
        )
        serial_cpu = (
            impls["serial"].get("cpu_seconds_per_outer_step", {}).get("median")
            if "serial" in impls
            else None
        )
        pool_s = impls["pool"]["seconds_per_outer_step"]["median"] if "pool" in impls else None
        for label, entry in impls.items():
            sec = entry["seconds_per_outer_step"]["median"]
            env_steps = median(entry["env_steps_per_outer_step"]) or tasks * inner_steps
            entry["tasks_per_second"] = tasks / sec
            entry["env_steps_per_second"] = env_steps / sec
            entry["speedup_vs_serial"] = serial_s / sec if serial_s else None
            entry["parallel_efficiency"] = (
                entry["speedup_vs_serial"] / group["workers"]
                if entry["speedup_vs_serial"]
                else None
            )
            entry["throughput_vs_pool"] = pool_s / sec if pool_s else None
            cpu = entry.get("cpu_seconds_per_outer_step", {}).get("median")
            entry["cpu_seconds_per_task"] = cpu / tasks if cpu else None
            entry["cpu_vs_serial"] = cpu / serial_cpu if cpu and serial_cpu else None
            entry["busy_cores"] = cpu / sec if cpu else None
            rows.append(
                {
                    "workers": group["workers"],
                    "implementation": label,
                    "seconds_per_outer_step": sec,
                    "tasks_per_second": entry["tasks_per_second"],
                    "env_steps_per_second": entry["env_steps_per_second"],
                    "speedup_vs_serial": entry["speedup_vs_serial"],
                    "parallel_efficiency": entry["parallel_efficiency"],
                    "throughput_vs_pool": entry["throughput_vs_pool"],
                    "construct_seconds": entry["construct_seconds"],
                    "warmup_seconds": entry["warmup_seconds"],
                    "cpu_seconds_per_task": entry["cpu_seconds_per_task"],
                    "cpu_vs_serial": entry["cpu_vs_serial"],
                    "busy_cores": entry["busy_cores"],
                }
            )
    return rows


def scaling_targets(groups: list[dict[str, Any]]) -> list[Target]:
    ray2 = next((g["implementations"].get("ray") for g in groups if g["workers"] == 2), None)
    flat2 = next((g["implementations"].get("ray_flat") for g in groups if g["workers"] == 2), None)
    return [
        Target(
            "ray2_vs_flat",
            "Ray backend, 2 workers: partial sums' throughput / every task's weights' (ray_flat)",
            flat2["seconds_per_outer_step"]["median"] / ray2["seconds_per_outer_step"]["median"]
            if ray2 and flat2
            else None,
            ">=",
            0.97,
            "x",
        ),
        Target(
            "ray2_vs_serial",
            "Ray backend, 2 workers: throughput / serial throughput",
            ray2["speedup_vs_serial"] if ray2 else None,
            ">=",
            1.95,
            "x",
        ),
        Target(
            "ray2_vs_pool",
            "Ray backend, 2 workers: throughput / Pool(2) reference throughput",
            ray2["throughput_vs_pool"] if ray2 else None,
            ">=",
            0.97,
            "x",
        ),
    ]


def plot(fig: Any, report: dict[str, Any]) -> None:
    """Tasks per second and speedup against the worker count, one line per implementation."""
    ax1, ax2, ax3 = fig.subplots(1, 3)
    by_impl: dict[str, list[tuple[int, float, float | None, float | None]]] = {}
    for row in report["rows"]:
        by_impl.setdefault(row["implementation"], []).append(
            (
                row["workers"],
                row["tasks_per_second"],
                row["speedup_vs_serial"],
                row.get("cpu_seconds_per_task"),
            )
        )
    colors = {label: f"C{i}" for i, label in enumerate(CHOICES)}
    for label, points in by_impl.items():
        points.sort()
        xs = [p[0] for p in points]
        color = colors.get(label)
        ax1.plot(xs, [p[1] for p in points], marker="o", label=label, color=color)
        ax3.plot(xs, [p[3] or 0.0 for p in points], marker="o", label=label, color=color)
        if label != "serial":
            ax2.plot(xs, [p[2] or 0.0 for p in points], marker="o", label=label, color=color)
    ks = sorted({row["workers"] for row in report["rows"]})
    ax2.plot(ks, ks, linestyle="--", color="grey", label="ideal")
    ax1.set(xlabel="workers", ylabel="tasks / s (median)", title="Throughput", xticks=ks)
    ax2.set(xlabel="workers", ylabel="speedup vs serial", title="Speedup (same rounds)", xticks=ks)
    ax3.set(xlabel="workers", ylabel="CPU s / task (process tree)", title="CPU cost", xticks=ks)
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scaling benchmark's options."""
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts (default 1,2)"
    )
    parser.add_argument(
        "--outer-steps", type=int, default=4, help="measured outer steps (after 1 warm-up)"
    )
    parser.add_argument(
        "--implementations",
        default=",".join(IMPLEMENTATIONS),
        help=f"comma-separated subset of {','.join(CHOICES)} (default: all but ray_flat)",
    )
    add_workload_arguments(parser)
