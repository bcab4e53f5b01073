"""The cluster benchmark's figures: per ``(mode, P, B)`` medians of the driver's per-step
figures, the check that every mode reached the same meta weights, the issue's targets, the table
and the figure (see :mod:`distributed_reptile.bench.cluster`)."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from distributed_reptile.bench.cluster_driver import MODES
from distributed_reptile.bench.common import MB, Target, print_table, summarize


def summarize_group(
    group: dict[str, Any], args: argparse.Namespace, workers: int
) -> dict[str, Any]:
    """Per-step figures of one ``(mode, P, B)`` and their medians."""
    steps, batch = group["steps"], group["batch"]
    sleep_path = math.ceil(batch / workers) * args.sleep
    if args.slow_factor > 1.0:
        sleep_path = batch * args.sleep / (workers - 1 + 1 / args.slow_factor)
    for s in steps:
        s["beyond_sleep_seconds"] = s["step_seconds"] - sleep_path
        s["driver_cpu_per_task_ms"] = s["driver_cpu_seconds"] / batch * 1e3
    keys = ("mode", "params_target", "parameters", "width", "batch", "tasks_per_call", "digest")
    out: dict[str, Any] = {k: group[k] for k in keys}
    out["calls"] = group.get("calls")
    for key in (
        "driver_cpu_seconds", "driver_cpu_per_task_ms", "step_seconds", "beyond_sleep_seconds",
        "wall_seconds", "wait_seconds", "meta_update_seconds", "sample_seconds",
        "peak_rss_bytes", "peak_private_bytes",
    ):  # fmt: skip
        out[key] = summarize([s[key] for s in steps])
    if steps and all(s.get("source_cpu_seconds") is not None for s in steps):
        out["source_cpu_seconds"] = summarize([s["source_cpu_seconds"] for s in steps])
    if steps and steps[0]["driver_node_in_bytes"] is not None:
        for s in steps:
            s["nodes_out_sum_bytes"] = sum(n["out_bytes"] for n in s["nodes"].values())
        for key in ("driver_node_in_bytes", "driver_node_out_bytes", "nodes_out_sum_bytes"):
            out[key] = summarize([s[key] for s in steps])
        out["driver_node_in_bytes_per_task"] = out["driver_node_in_bytes"]["median"] / batch
        out["weights_bytes"] = group["parameters"] * 4
        out["nodes"] = {
            label: {
                d: float(np.median([s["nodes"][label][d] for s in steps]))
                for d in ("in_bytes", "out_bytes")
            }
            for label in steps[0]["nodes"]
        }
    out["steps"] = steps
    return out


def weights_check(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether every mode reached the same meta weights for each ``(P, B)``: each mode against
    the first of :data:`MODES` that ran it."""
    digests: dict[tuple[int, int], dict[str, str]] = {}
    for g in groups:
        digests.setdefault((g["params_target"], g["batch"]), {})[g["mode"]] = g["digest"]
    pairs = []
    for (p, b), by_mode in digests.items():
        modes = [m for m in MODES if m in by_mode]
        for mode in modes[1:]:
            pairs.append(
                {"params_target": p, "batch": b, "modes": [modes[0], mode],
                 "identical": by_mode[mode] == by_mode[modes[0]],
                 "sha256": {modes[0]: by_mode[modes[0]], mode: by_mode[mode]}}
            )  # fmt: skip
    return {
        "weights_identical": all(x["identical"] for x in pairs) if pairs else None,
        "weights_check": {
            "how": "sha256 of the meta policy's state_dict after the measured outer steps of each "
            "(P, B); every mode starts them from the same meta weights and draws the same tasks",
            "pairs": pairs,
        },
    }


def targets(report: dict[str, Any], args: argparse.Namespace) -> list[Target]:
    """The issue's targets, on ``ReptileMetaRL``'s own path on several nodes: the ``node`` mode
    (what ``node_reduction="auto"`` picks there), or ``reduced`` when ``node`` was not run."""
    res = {(r["mode"], r["params_target"], r["batch"]): r for r in report["results"]}
    stats = report["stats_bytes_per_task"] or 0
    mode = "node" if "node" in args.mode_list else "reduced"

    def measured(size: int, batch: int, key: str) -> float | None:
        r = res.get((mode, size, batch))
        return r[key]["median"] if r is not None and key in r else None

    targets = []
    for size in args.size_list:
        for batch in args.task_list:
            r = res.get((mode, size, batch))
            params = r["parameters"] if r is not None else size
            targets.append(
                Target(
                    f"bytes_p{size}_b{batch}",
                    f"{mode}, P={params:,}, B={batch}: bytes into the driver's node per outer "
                    f"step (median) <= (nodes + 1) x P x 4 + B x {stats} bytes of task statistics",
                    measured(size, batch, "driver_node_in_bytes"),
                    "<=",
                    (args.nodes + 1) * params * 4 + batch * stats,
                    "bytes",
                )
            )
    targets.append(Target("cpu_b1024_p10k", f"{mode}, B=1024, P=10k: driver CPU per outer step "
                          "(median)", measured(10_000, 1024, "driver_cpu_seconds"), "<=", 0.25, "s"))  # fmt: skip
    targets.append(Target("cpu_b64_p10m", f"{mode}, B=64, P=10M: driver CPU per outer step "
                          "(median)", measured(10_000_000, 64, "driver_cpu_seconds"), "<=", 0.2, "s"))  # fmt: skip
    for size in args.size_list:
        sample, step = measured(size, 1024, "sample_seconds"), measured(size, 1024, "step_seconds")
        targets.append(
            Target(
                f"source_keeps_up_b1024_p{size}",
                f"{mode}, B=1024, P={size:,}: the driver's wait for the step's 1024 tasks, share "
                "of the step time (median)",
                None if sample is None or not step else 100.0 * sample / step,
                "<=",
                1.0,
                "%",
            )
        )
        targets.append(
            Target(
                f"cpu_per_task_b1024_p{size}",
                f"{mode}, B=1024, P={size:,}: driver CPU per task (median)",
                measured(size, 1024, "driver_cpu_per_task_ms"),
                "<=",
                0.2,
                "ms",
            )
        )
    return targets


def print_results(results: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> None:
    rows = [
        {
            "mode": r["mode"], "params": r["parameters"], "batch": r["batch"],
            "tpc": r["tasks_per_call"], "calls": r.get("calls"), "step": r["step_seconds"]["median"],
            "beyond": r["beyond_sleep_seconds"]["median"], "cpu": r["driver_cpu_seconds"]["median"],
            "cpu_task": r["driver_cpu_per_task_ms"]["median"],
            "mb_in": r["driver_node_in_bytes"]["median"] / 1e6 if "driver_node_in_bytes" in r else None,
            "rss": r["peak_rss_bytes"]["max"] / MB,
            "source": r["source_cpu_seconds"]["median"] if "source_cpu_seconds" in r else None,
            "sample": r["sample_seconds"]["median"],
        }
        for r in results
    ]  # fmt: skip
    print_table(
        rows,
        [
            ("mode", "mode", ""), ("params", "P", ","), ("batch", "B", "d"),
            ("tpc", "tasks/call", "d"), ("calls", "calls", "d"), ("step", "step s", ".3f"), ("beyond", "beyond sleep s", ".3f"),
            ("cpu", "driver CPU s", ".3f"), ("cpu_task", "CPU/task ms", ".3f"),
            ("mb_in", "MB into driver node", ".2f"), ("rss", "peak RSS MiB", ".0f"),
            ("source", "source CPU s", ".3f"), ("sample", "tasks wait s", ".3f"),
        ],
    )  # fmt: skip
    for s in skipped:
        print(f"skipped {s['mode']} P={s['params_target']:,} B={s['batch']}: {s['reason']}")


def plot(fig: Any, report: dict[str, Any]) -> None:
    """Driver CPU and bytes into the driver's node per outer step against B, per mode and P."""
    ax1, ax2 = fig.subplots(1, 2)
    results = report["results"]
    sizes = sorted({r["params_target"] for r in results})
    colors = {p: f"C{i}" for i, p in enumerate(sizes)}
    for mode, style in (("flat", "-o"), ("reduced", "--s"), ("node", "-.^")):
        for size in sizes:
            rows = sorted(
                (r for r in results if r["mode"] == mode and r["params_target"] == size),
                key=lambda r: r["batch"],
            )
            if not rows:
                continue
            xs = [r["batch"] for r in rows]
            label = f"{mode}, P={rows[0]['parameters']:,}"
            cpu = [max(r["driver_cpu_seconds"]["median"], 1e-4) for r in rows]
            ax1.plot(xs, cpu, style, color=colors[size], label=label)
            if all("driver_node_in_bytes" in r for r in rows):
                mb = [max(r["driver_node_in_bytes"]["median"], 1.0) for r in rows]
                ax2.plot(xs, mb, style, color=colors[size], label=label)
    ax1.set(xscale="log", yscale="log", xlabel="tasks per outer step (B)",
            ylabel="driver CPU s per outer step (median)", title="Driver CPU")  # fmt: skip
    ax2.set(xscale="log", yscale="log", xlabel="tasks per outer step (B)",
            ylabel="bytes per outer step (median)", title="Bytes into the driver's node")  # fmt: skip
    nodes = len(report["network"]["node_ips"])
    for size in sizes:
        params = next(r["parameters"] for r in results if r["params_target"] == size)
        ax2.axhline((nodes + 1) * params * 4, color=colors[size], linestyle=":", linewidth=1)
    batches = sorted({r["batch"] for r in results})
    for ax in (ax1, ax2):
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        if ax.get_lines():
            ax.legend(fontsize=7, title="dotted: (nodes + 1) x P x 4" if ax is ax2 else None)
    if not report["network"]["per_node_bytes"]:
        ax2.text(0.5, 0.5, "not measured: one loopback namespace", ha="center",
                 transform=ax2.transAxes)  # fmt: skip
