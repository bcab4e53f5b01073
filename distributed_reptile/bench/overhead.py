"""Overhead: what the orchestration costs when the inner loop costs (almost) nothing.

Two runs of the trainer's own outer loop:

* a no-op learner (:class:`~distributed_reptile.bench.learners.NoOpLearner`: returns the meta
  weights at once, builds no env and no model) on the serial backend and on ``k`` Ray workers:
  the per-task orchestration cost;
* a sleep learner (:class:`~distributed_reptile.bench.learners.SleepLearner`: sleeps ``S``
  seconds, no CPU) on many actors with a tiny CPU share each, so a large pool fits on a small
  machine: what an outer step takes beyond the sleep.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import psutil

from distributed_reptile.bench.common import (
    MB,
    BenchInputError,
    CpuMeter,
    Target,
    new_report,
    print_table,
    ray_running,
    summarize,
    write_report,
)
from distributed_reptile.bench.learners import NoOpLearner, SleepLearner
from distributed_reptile.bench.workload import Workload

NAME = "overhead"
#: Memory of one idle learner actor (torch + SB3 imported; ~215 MB PSS measured), for the start-up check.
ACTOR_MEMORY_ESTIMATE = 220 * MB


def measure_trainer(
    kwargs: dict[str, Any], outer_steps: int, warmup_steps: int = 1
) -> dict[str, Any]:
    """Build a trainer, run ``warmup_steps`` then ``outer_steps`` outer steps; per-step figures.

    :param kwargs: ReptileMetaRL keyword arguments.
    :param outer_steps: measured outer steps.
    :param warmup_steps: outer steps run first and left out.
    """
    from distributed_reptile import ReptileMetaRL

    t0 = time.perf_counter()
    meta = ReptileMetaRL(**kwargs)
    construct = time.perf_counter() - t0
    try:
        worker_info = list(getattr(meta.runner, "worker_info", []))
        if warmup_steps:
            meta.learn(outer_steps=warmup_steps)
        meta.learn(outer_steps=warmup_steps + outer_steps, reset_num_timesteps=False)
        records = meta.step_records[warmup_steps:]
    finally:
        meta.close()
    return {"construct_seconds": construct, "records": records, "worker_info": worker_info}


def step_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step and per-task orchestration figures from the trainer's step records.

    ``beyond_task_seconds`` is the step time minus its critical path: the busiest worker's summed
    task time (``timings["total"]``), so it is what the orchestration adds to the tasks themselves.
    ``task_overhead_seconds`` is ``round_trip - total`` per task (submission, weight fetch, queueing
    behind the worker's previous task, result transfer), on the Ray backend only.
    """
    step_s, per_task, beyond, task_overhead, fetch = [], [], [], [], []
    for rec in records:
        timings = rec["task_timings"]
        n = max(len(timings), 1)
        step_s.append(rec["step_seconds"])
        per_task.append(rec["step_seconds"] / n)
        busy: dict[Any, float] = {}
        for pid, t in zip(rec["task_pids"], timings, strict=True):
            busy[pid] = busy.get(pid, 0.0) + t["total"]
            if "round_trip" in t:
                task_overhead.append(t["round_trip"] - t["total"])
                fetch.append(t.get("weight_fetch", 0.0))
        beyond.append(rec["step_seconds"] - max(busy.values(), default=0.0))
    return {
        "step_seconds": summarize(step_s),
        "per_task_amortized_seconds": summarize(per_task),
        "beyond_task_seconds": summarize(beyond),
        "task_overhead_seconds": summarize(task_overhead),
        "weight_fetch_seconds": summarize(fetch),
        "sample_seconds": summarize([r["sample_seconds"] for r in records]),
        "meta_update_seconds": summarize([r["meta_update_seconds"] for r in records]),
        "raw_step_seconds": step_s,
        "raw_beyond_task_seconds": beyond,
        "raw_task_overhead_seconds": task_overhead,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the overhead benchmark; returns the report (also written to ``args.out_dir``)."""
    for name in (
        "workers",
        "tasks",
        "outer_steps",
        "actors",
        "tasks_per_actor",
        "sleep_outer_steps",
    ):
        if getattr(args, name) <= 0:
            raise BenchInputError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}."
            )
    if args.sleep <= 0:
        raise BenchInputError(f"--sleep must be a positive number of seconds, got {args.sleep}.")
    needed = args.actors * ACTOR_MEMORY_ESTIMATE
    available = psutil.virtual_memory().available
    if needed > 0.8 * available:
        raise BenchInputError(
            f"{args.actors} actors need about {needed / 2**30:.1f} GiB (each imports torch and SB3) "
            f"and {available / 2**30:.1f} GiB is available: lower --actors."
        )
    workload = Workload(seed=args.seed)
    settings = {
        "noop": {
            "workers": args.workers,
            "tasks_per_outer_step": args.tasks,
            "measured_outer_steps": args.outer_steps,
            "warmup_outer_steps": 1,
            "learner": "NoOpLearner: returns the meta weights at once; builds no env and no model",
        },
        "sleep": {
            "actors": args.actors,
            "tasks_per_outer_step": args.actors * args.tasks_per_actor,
            "sleep_seconds": args.sleep,
            "measured_outer_steps": args.sleep_outer_steps,
            "warmup_outer_steps": 1,
            "worker_resources": {"num_cpus": args.actor_cpus},
            "learner": "SleepLearner: time.sleep(S), then returns the meta weights; no CPU",
        },
        "policy": "PPO MlpPolicy on the CartPole family (SB3 default net_arch)",
        "seed": args.seed,
    }
    report = new_report(NAME, settings)
    meter = CpuMeter()
    num_cpus = max(4, args.workers + 1)
    with ray_running(num_cpus=num_cpus) as ray_info:
        report["ray"] = {**ray_info, "num_cpus_requested": num_cpus}
        runs = {}
        noop = {"inner_learner_cls": NoOpLearner, "task_batch_size": args.tasks}
        runs["noop_serial"] = measure_trainer(
            workload.trainer_kwargs("serial", **noop), args.outer_steps
        )
        runs["noop_ray"] = measure_trainer(
            workload.trainer_kwargs("ray", num_workers=args.workers, **noop), args.outer_steps
        )
        runs["sleep_ray"] = measure_trainer(
            workload.trainer_kwargs(
                "ray",
                num_workers=args.actors,
                inner_learner_cls=SleepLearner,
                task_batch_size=args.actors * args.tasks_per_actor,
                inner_loop_params={"sleep_seconds": args.sleep},
                worker_resources={"num_cpus": args.actor_cpus},
            ),
            args.sleep_outer_steps,
        )
    report["cpu"] = meter.summary()
    results = {}
    for label, out in runs.items():
        results[label] = {
            "construct_seconds": out["construct_seconds"],
            **step_figures(out["records"]),
        }
    sleep_tasks = args.actors * args.tasks_per_actor
    results["sleep_ray"]["distinct_workers_used"] = len(
        {pid for r in runs["sleep_ray"]["records"] for pid in r["task_pids"]}
    )
    results["sleep_ray"]["actor_start_seconds_per_actor"] = (
        results["sleep_ray"]["construct_seconds"] / args.actors
    )
    results["sleep_ray"]["beyond_sleep_seconds"] = summarize(
        [s - args.sleep * args.tasks_per_actor for s in results["sleep_ray"]["raw_step_seconds"]]
    )
    report["results"] = results
    rows = [
        {
            "run": label,
            "tasks": args.tasks if label.startswith("noop") else sleep_tasks,
            "step_ms": r["step_seconds"]["median"] * 1e3,
            "per_task_ms": r["per_task_amortized_seconds"]["median"] * 1e3,
            "per_task_p90_ms": r["per_task_amortized_seconds"]["p90"] * 1e3,
            "beyond_ms": r["beyond_task_seconds"]["median"] * 1e3,
            "rt_ms": r["task_overhead_seconds"]["median"] * 1e3,
            "start_s": r["construct_seconds"],
        }
        for label, r in results.items()
    ]
    print_table(
        rows,
        [
            ("run", "run", ""),
            ("tasks", "tasks/step", "d"),
            ("step_ms", "step ms", ".2f"),
            ("per_task_ms", "per task ms", ".3f"),
            ("per_task_p90_ms", "p90", ".3f"),
            ("beyond_ms", "beyond tasks ms", ".2f"),
            ("rt_ms", "round trip - task ms", ".2f"),
            ("start_s", "start s", ".2f"),
        ],
    )
    targets = [
        Target(
            "noop_per_task",
            f"no-op learner, Ray {args.workers} workers: per-task orchestration cost "
            "(median of outer step / tasks)",
            results["noop_ray"]["per_task_amortized_seconds"]["median"] * 1e3,
            "<=",
            3.0,
            "ms",
        ),
        Target(
            "sleep_beyond",
            f"{args.actors} simulated actors: outer-step time beyond the sleep (median)",
            results["sleep_ray"]["beyond_sleep_seconds"]["median"] * 1e3,
            "<=",
            100.0,
            "ms",
        ),
    ]
    write_report(args.out_dir, report, targets, lambda fig: plot(fig, report))
    return report


def plot(fig: Any, report: dict[str, Any]) -> None:
    """Per-task overhead distribution (no-op) and outer-step time beyond the sleep (many actors)."""
    ax1, ax2 = fig.subplots(1, 2)
    res = report["results"]
    noop = np.array(res["noop_ray"]["raw_task_overhead_seconds"], dtype=float) * 1e3
    if noop.size:
        ax1.hist(noop, bins=30, color="tab:blue", alpha=0.8)
    med = res["noop_ray"]["per_task_amortized_seconds"]["median"] * 1e3
    ax1.axvline(med, color="tab:red", linestyle="--", label=f"outer step / tasks: {med:.2f} ms")
    ax1.set(
        xlabel="round trip - task time (ms)", ylabel="tasks", title="No-op learner on Ray: per task"
    )
    ax1.legend()
    sleep = report["settings"]["sleep"]
    beyond = np.array(res["sleep_ray"]["raw_step_seconds"], dtype=float) - sleep["sleep_seconds"]
    steps = list(range(1, len(beyond) + 1))
    ax2.bar(steps, beyond * 1e3, color="tab:orange")
    ax2.set_xticks(steps)
    ax2.axhline(100.0, color="grey", linestyle="--", label="target 100 ms")
    ax2.set(
        xlabel="outer step",
        ylabel="step time - sleep (ms)",
        title=f"{sleep['actors']} sleeping actors ({sleep['sleep_seconds']} s each)",
    )
    ax2.legend()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The overhead benchmark's options."""
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of the no-op run")
    parser.add_argument(
        "--tasks", type=int, default=32, help="tasks per outer step of the no-op runs"
    )
    parser.add_argument(
        "--outer-steps", type=int, default=20, help="measured outer steps of the no-op runs"
    )
    parser.add_argument("--actors", type=int, default=64, help="actors of the sleep run")
    parser.add_argument(
        "--tasks-per-actor", type=int, default=1, help="tasks per actor per outer step (sleep run)"
    )
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each sleep task takes")
    parser.add_argument(
        "--sleep-outer-steps", type=int, default=5, help="measured outer steps of the sleep run"
    )
    parser.add_argument(
        "--actor-cpus", type=float, default=0.01, help="Ray CPUs of each sleeping actor"
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed")
