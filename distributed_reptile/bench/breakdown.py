"""Breakdown: where a task's time goes on the Ray backend, and how much memory each process holds.

Per task, from the timings the runner and the learner record (``AdaptedResult.timings``):
weight fetch, env build, model ready (meta weights loaded, optimizer and buffers reset), learn, the
rest of the task (``total`` minus those: copying the adapted weights out, any evaluation), and
queue wait + result transfer (``round_trip - total - weight_fetch``). The first task each worker
gets in an outer step waits in no queue, so the median of that remainder over those tasks
estimates dispatch + transfer; the rest of other tasks' remainder is queue wait (the runner keeps
two tasks per worker in flight).

Memory: a psutil thread samples the resident memory of the driver and of each worker actor (the
pids in ``meta.runner.worker_info``).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from distributed_reptile.bench.common import (
    BenchInputError,
    CpuMeter,
    RssSampler,
    Target,
    median,
    new_report,
    print_table,
    ray_running,
    summarize,
    write_report,
)
from distributed_reptile.bench.workload import add_workload_arguments, workload_from_args

NAME = "breakdown"
COMPONENTS = (
    "weight_fetch",
    "env_build",
    "model_ready",
    "learn",
    "rest_of_task",
    "queue_wait",
    "dispatch_transfer",
)
#: Largest resident memory of one worker actor running a CartPole PPO learner, in MB (10^6 bytes).
WORKER_RSS_TARGET_MB = 450.0


def task_rows(records: Sequence[Mapping[str, Any]], workers: int) -> list[dict[str, Any]]:
    """One row per task: its timings and the split of ``round_trip - total - weight_fetch``."""
    rows = []
    for rec in records:
        for index, (pid, t) in enumerate(zip(rec["task_pids"], rec["task_timings"], strict=True)):
            rows.append(
                {
                    "outer_step": rec["outer_step"],
                    "index": index,
                    "pid": pid,
                    "first_on_worker": index < workers,
                    **{
                        k: t.get(k, 0.0)
                        for k in (
                            "weight_fetch",
                            "env_build",
                            "model_ready",
                            "learn",
                            "total",
                            "round_trip",
                        )
                    },
                    "rest_of_task": max(
                        t["total"]
                        - t.get("env_build", 0.0)
                        - t.get("model_ready", 0.0)
                        - t.get("learn", 0.0),
                        0.0,
                    ),
                    "queue_plus_transfer": t["round_trip"]
                    - t["total"]
                    - t.get("weight_fetch", 0.0),
                }
            )
    transfer = median([r["queue_plus_transfer"] for r in rows if r["first_on_worker"]])
    for r in rows:
        if r["first_on_worker"]:
            r["dispatch_transfer"], r["queue_wait"] = r["queue_plus_transfer"], 0.0
        else:
            r["dispatch_transfer"] = min(transfer, r["queue_plus_transfer"])
            r["queue_wait"] = max(r["queue_plus_transfer"] - transfer, 0.0)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the breakdown benchmark; returns the report (also written to ``args.out_dir``)."""
    from distributed_reptile import ReptileMetaRL

    if args.workers <= 0 or args.outer_steps <= 0:
        raise BenchInputError("--workers and --outer-steps must be positive integers.")
    workload = workload_from_args(args)
    settings = {
        "workers": args.workers,
        "measured_outer_steps": args.outer_steps,
        "warmup_outer_steps": 1,
        "workload": workload.describe(),
        "memory": "psutil thread sampling memory_info of the driver and the worker pids "
        "(meta.runner.worker_info) every sample_interval seconds",
        "sample_interval": args.sample_interval,
        "split": "queue_wait + dispatch_transfer = round_trip - total - weight_fetch; dispatch_transfer "
        "is the median of that remainder over each worker's first task of a step",
    }
    report = new_report(NAME, settings)
    meter = CpuMeter()
    num_cpus = max(4, args.workers + 1)
    with ray_running(num_cpus=num_cpus) as ray_info:
        report["ray"] = {**ray_info, "num_cpus_requested": num_cpus}
        t0 = time.perf_counter()
        meta = ReptileMetaRL(**workload.trainer_kwargs("ray", num_workers=args.workers))
        construct = time.perf_counter() - t0
        try:
            info: list[dict[str, Any]] = list(getattr(meta.runner, "worker_info", []))
            pids = {"driver": os.getpid(), **{f"worker{i}": w["pid"] for i, w in enumerate(info)}}
            with RssSampler(pids, interval=args.sample_interval) as sampler:
                idle = sampler.mark()
                meta.learn(outer_steps=1)
                meta.learn(outer_steps=1 + args.outer_steps, reset_num_timesteps=False)
                peaks = sampler.overall_peaks()
            records = meta.step_records[1:]
        finally:
            meta.close()
    report["cpu"] = meter.summary()
    rows = task_rows(records, args.workers)
    memory = {
        label: {
            "idle_rss_bytes": idle.get(label, {}).get("rss"),
            "peak_rss_bytes": p["rss"],
            "peak_private_bytes": p["private"],
            "pid": pids[label],
        }
        for label, p in peaks.items()
    }
    worker_peaks = [
        m["peak_rss_bytes"] for label, m in memory.items() if label.startswith("worker")
    ]
    report["results"] = {
        "construct_seconds": construct,
        "worker_info": info,
        "step_seconds": summarize([r["step_seconds"] for r in records]),
        "components": {
            k: summarize([r[k] for r in rows])
            for k in (*COMPONENTS, "total", "round_trip", "queue_plus_transfer")
        },
        "memory": memory,
        "samples": sampler.samples,
        "tasks": rows,
    }
    comp = report["results"]["components"]
    rt = comp["round_trip"]["median"]
    print_table(
        [
            {
                "component": k,
                "median_ms": comp[k]["median"] * 1e3,
                "p90_ms": comp[k]["p90"] * 1e3,
                "share": comp[k]["median"] / rt if rt else None,
            }
            for k in (*COMPONENTS, "round_trip")
        ],
        [
            ("component", "component", ""),
            ("median_ms", "median ms", ".2f"),
            ("p90_ms", "p90 ms", ".2f"),
            ("share", "of round trip", ".3f"),
        ],
    )
    print_table(
        [
            {
                "process": label,
                "pid": m["pid"],
                "rss": m["peak_rss_bytes"] / 1e6,
                "private": m["peak_private_bytes"] / 1e6,
            }
            for label, m in memory.items()
        ],
        [
            ("process", "process", ""),
            ("pid", "pid", "d"),
            ("rss", "peak rss MB", ".1f"),
            ("private", "peak private MB", ".1f"),
        ],
    )
    targets = [
        Target(
            "worker_rss",
            "largest worker actor peak RSS, CartPole PPO learner",
            max(worker_peaks) / 1e6 if worker_peaks else None,
            "<=",
            WORKER_RSS_TARGET_MB,
            "MB",
        )
    ]
    write_report(args.out_dir, report, targets, lambda fig: plot(fig, report))
    return report


def plot(fig: Any, report: dict[str, Any]) -> None:
    """Stacked per-task time components, and peak memory per process."""
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    tasks = report["results"]["tasks"]
    xs = range(len(tasks))
    bottom = [0.0] * len(tasks)
    for comp in COMPONENTS:
        values = [t[comp] for t in tasks]
        ax1.bar(xs, values, bottom=bottom, label=comp)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax1.set(xlabel="task (outer step, index)", ylabel="seconds", title="Per-task time, Ray backend")
    ax1.set_xticks(
        list(xs), [f"{t['outer_step']}.{t['index']}" for t in tasks], rotation=90, fontsize=7
    )
    ax1.legend(fontsize=8)
    memory = report["results"]["memory"]
    labels = list(memory)
    ax2.bar(labels, [memory[label]["peak_rss_bytes"] / 1e6 for label in labels], label="peak rss")
    ax2.bar(
        labels,
        [memory[label]["peak_private_bytes"] / 1e6 for label in labels],
        label="peak private",
        alpha=0.7,
    )
    ax2.axhline(
        WORKER_RSS_TARGET_MB, color="grey", linestyle="--", label=f"{WORKER_RSS_TARGET_MB:g} MB"
    )
    ax2.set(ylabel="MB", title="Peak memory per process")
    ax2.legend(fontsize=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The breakdown benchmark's options."""
    parser.add_argument("--workers", type=int, default=2, help="Ray workers")
    parser.add_argument(
        "--outer-steps", type=int, default=3, help="measured outer steps (after 1 warm-up)"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.01, help="seconds between memory samples"
    )
    add_workload_arguments(parser)
