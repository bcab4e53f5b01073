"""Weights: what moving the meta weights costs per outer step, from ~10 thousand to ~10 million
parameters, and how many copies of them the driver holds.

Each size is a PPO ``MlpPolicy`` with ``net_arch=dict(pi=[w, w], vf=[w, w])`` on the CartPole
family, run by the Ray backend with the no-op learner (returns the meta weights at once, builds no
env and no model), so an outer step is only: sampling, copying the meta weights to numpy,
``ray.put``, the workers fetching them and sending them back, the driver collecting the results
and the Reptile meta-update.

Memory: a psutil thread samples the driver's resident memory every few milliseconds (torch
allocations are invisible to tracemalloc). ``private`` is ``rss - shared`` (anonymous pages the
driver holds itself); ``rss`` also counts object-store pages the driver mapped.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from distributed_reptile.bench.common import (
    BenchInputError,
    CpuMeter,
    RssSampler,
    Target,
    new_report,
    parse_int_list,
    print_table,
    ray_running,
    summarize,
    write_report,
)
from distributed_reptile.bench.learners import NoOpLearner
from distributed_reptile.bench.workload import Workload, width_for_parameters

NAME = "weights"
#: "A few copies": the most copies of the weights the driver may hold at its peak.
MAX_COPIES = 4.0


def measure_size(target_params: int, args: argparse.Namespace) -> dict[str, Any]:
    """One policy size: per-step timings and the driver's peak memory increase."""
    import ray

    from distributed_reptile import ReptileMetaRL
    from distributed_reptile.weights import module_to_numpy, nbytes

    width = width_for_parameters(target_params)
    workload = Workload(
        task_batch_size=args.tasks,
        net_arch={"pi": [width, width], "vf": [width, width]},
        seed=args.seed,
    )
    t0 = time.perf_counter()
    meta = ReptileMetaRL(
        **workload.trainer_kwargs("ray", num_workers=args.workers, inner_learner_cls=NoOpLearner)
    )
    construct = time.perf_counter() - t0
    steps: list[dict[str, Any]] = []
    try:
        params = int(sum(p.numel() for p in meta.meta_policy.parameters()))
        copy_bytes = nbytes(module_to_numpy(meta.meta_policy))
        with RssSampler({"driver": os.getpid()}, interval=args.sample_interval) as sampler:
            start_mem = sampler.mark()["driver"]
            meta.learn(outer_steps=1)
            window_peaks = [sampler.peaks()["driver"]]
            for _ in range(args.outer_steps):
                base = sampler.mark()["driver"]
                meta.learn(outer_steps=meta.num_outer_steps + 1, reset_num_timesteps=False)
                peak = sampler.peaks()["driver"]
                window_peaks.append(peak)
                rec = meta.step_records[-1]
                # The broadcast is timed again on the same weights, outside the step.
                t_copy = time.perf_counter()
                weights = module_to_numpy(meta.meta_policy)
                t_put = time.perf_counter()
                ref = ray.put(weights)
                t_end = time.perf_counter()
                del ref, weights
                put = t_end - t_put
                steps.append(
                    {
                        "step_seconds": rec["step_seconds"],
                        "sample_seconds": rec["sample_seconds"],
                        "wait_seconds": rec["wait_seconds"],
                        "meta_update_seconds": rec["meta_update_seconds"],
                        "to_numpy_seconds": t_put - t_copy,
                        "broadcast_seconds": put,
                        "collection_seconds": max(rec["wait_seconds"] - put, 0.0),
                        "weights_handling_seconds": rec["step_seconds"] - rec["sample_seconds"],
                        "rss_increase_bytes": peak["rss"] - base["rss"],
                        "private_increase_bytes": peak["private"] - base["private"],
                    }
                )
    finally:
        meta.close()
    out: dict[str, Any] = {
        "target_parameters": target_params,
        "width": width,
        "parameters": params,
        "copy_bytes": copy_bytes,
        "construct_seconds": construct,
        "steps": steps,
        "samples": sampler.samples,
        # Peak over the outer steps themselves (warm-up included, the separate ray.put timing
        # left out) above the driver's memory before the first step: what the machine must hold.
        "run_private_increase_bytes": max(p["private"] for p in window_peaks)
        - start_mem["private"],
        "run_rss_increase_bytes": max(p["rss"] for p in window_peaks) - start_mem["rss"],
    }
    for key in steps[0]:
        out[key] = summarize([s[key] for s in steps])
    out["private_peak_copies"] = out["run_private_increase_bytes"] / copy_bytes
    out["rss_peak_copies"] = out["run_rss_increase_bytes"] / copy_bytes
    out["private_step_peak_copies"] = out["private_increase_bytes"]["max"] / copy_bytes
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the weights benchmark; returns the report (also written to ``args.out_dir``)."""
    sizes = parse_int_list(args.sizes, "--sizes")
    for name in ("workers", "tasks", "outer_steps"):
        if getattr(args, name) <= 0:
            raise BenchInputError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}."
            )
    settings = {
        "sizes": sizes,
        "workers": args.workers,
        "tasks_per_outer_step": args.tasks,
        "measured_outer_steps": args.outer_steps,
        "warmup_outer_steps": 1,
        "learner": "NoOpLearner: returns the meta weights at once; builds no env and no model",
        "policy": "PPO MlpPolicy, net_arch=dict(pi=[w, w], vf=[w, w]), CartPole family",
        "memory": "psutil thread sampling the driver's memory_info every sample_interval seconds; "
        "private = rss - shared; *_peak_copies: peak over the warm-up and measured steps above the "
        "level before the first step, in copies of the weights (memory the allocator kept from "
        "earlier steps counts); private_step_peak_copies: the largest rise within one step",
        "sample_interval": args.sample_interval,
        "broadcast": "ray.put of the meta weights, timed again on the same weights right after each step",
        "collection": "the driver's wait for results (trainer record wait_seconds) minus the broadcast",
        "seed": args.seed,
    }
    report = new_report(NAME, settings)
    meter = CpuMeter()
    num_cpus = max(4, args.workers + 1)
    results = []
    with ray_running(num_cpus=num_cpus) as ray_info:
        report["ray"] = {**ray_info, "num_cpus_requested": num_cpus}
        for size in sizes:
            res = measure_size(size, args)
            results.append(res)
            print(
                f"{res['parameters']:,} parameters: step {res['step_seconds']['median']:.3f}s, "
                f"private peak {res['private_peak_copies']:.2f} copies"
            )
    report["cpu"] = meter.summary()
    report["results"] = results
    rows = [
        {
            "params": r["parameters"],
            "mb": r["copy_bytes"] / 2**20,
            "step": r["step_seconds"]["median"],
            "to_numpy": r["to_numpy_seconds"]["median"],
            "put": r["broadcast_seconds"]["median"],
            "collect": r["collection_seconds"]["median"],
            "update": r["meta_update_seconds"]["median"],
            "rss": r["rss_peak_copies"],
            "private": r["private_peak_copies"],
            "private_step": r["private_step_peak_copies"],
        }
        for r in results
    ]
    print_table(
        rows,
        [
            ("params", "parameters", ","),
            ("mb", "MiB", ".1f"),
            ("step", "step s", ".4f"),
            ("to_numpy", "to numpy s", ".4f"),
            ("put", "ray.put s", ".4f"),
            ("collect", "collect s", ".4f"),
            ("update", "meta-update s", ".4f"),
            ("rss", "rss peak copies", ".2f"),
            ("private", "private peak copies", ".2f"),
            ("private_step", "within a step", ".2f"),
        ],
    )
    largest = max(results, key=lambda r: r["parameters"])
    big = largest if largest["parameters"] >= 5_000_000 else None
    targets = [
        Target(
            "weights_10m_step",
            "largest policy (>= 5M parameters), "
            f"{args.tasks} tasks: weights handling per outer step (to numpy + ray.put + collection "
            "+ meta-update, median)",
            big["weights_handling_seconds"]["median"] if big else None,
            "<=",
            0.5,
            "s",
        ),
        Target(
            "weights_10m_copies",
            "largest policy: driver's peak private memory over the run above its level before the "
            "first outer step, in copies of the weights",
            big["private_peak_copies"] if big else None,
            "<=",
            MAX_COPIES,
            "copies",
        ),
    ]
    write_report(args.out_dir, report, targets, lambda fig: plot(fig, report))
    return report


def plot(fig: Any, report: dict[str, Any]) -> None:
    """Time components and peak memory (in copies of the weights) against the parameter count."""
    ax1, ax2 = fig.subplots(1, 2)
    res = report["results"]
    xs = [r["parameters"] for r in res]
    for key, label in (
        ("step_seconds", "outer step"),
        ("to_numpy_seconds", "to numpy"),
        ("broadcast_seconds", "ray.put"),
        ("collection_seconds", "collection"),
        ("meta_update_seconds", "meta-update"),
    ):
        ax1.plot(xs, [max(r[key]["median"], 1e-6) for r in res], marker="o", label=label)
    ax1.axhline(0.5, color="grey", linestyle="--", label="target 0.5 s")
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="policy parameters",
        ylabel="seconds (median)",
        title=f"Per outer step, {report['settings']['tasks_per_outer_step']} tasks",
    )
    ax1.legend(fontsize=8)
    ax2.plot(xs, [r["private_peak_copies"] for r in res], marker="o", label="private, run peak")
    ax2.plot(
        xs, [r["private_step_peak_copies"] for r in res], marker="^", label="private, within a step"
    )
    ax2.plot(xs, [r["rss_peak_copies"] for r in res], marker="s", label="rss, run peak")
    ax2.axhline(MAX_COPIES, color="grey", linestyle="--", label=f"{MAX_COPIES:g} copies")
    ax2.set(
        xscale="log",
        yscale="symlog",
        xlabel="policy parameters",
        ylabel="peak increase / one copy",
        title="Driver memory during an outer step",
    )
    ax2.legend(fontsize=8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The weights benchmark's options."""
    parser.add_argument(
        "--sizes", default="1e4,1e5,1e6,1e7", help="policy sizes in parameters, comma-separated"
    )
    parser.add_argument("--workers", type=int, default=2, help="Ray workers")
    parser.add_argument("--tasks", type=int, default=16, help="tasks per outer step")
    parser.add_argument("--outer-steps", type=int, default=5, help="measured outer steps per size")
    parser.add_argument(
        "--sample-interval", type=float, default=0.002, help="seconds between memory samples"
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed")
