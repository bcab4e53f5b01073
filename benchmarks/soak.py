"""Soak run: does memory, the object store, the open files or the checkpoint grow over a long run?

``--backend ray`` (the default) runs many outer steps of tiny tasks (PPO on the CartPole family,
64 inner steps, 4 tasks per outer step; ``--learner noop`` for tasks that return the meta weights
at once) on Ray workers and prints, every ``--every`` outer steps:
the driver's RSS, each worker's RSS (and the task-source actor's), the object store's usage, the
object references the driver holds, its open file descriptors and threads, and the pickled size
of ``step_records`` (the newest 1000 records: it stops growing there).

``--backend serial`` runs many tiny outer steps in-process (``--learner noop``: a learner that
returns the meta weights at once, so the steps cost almost nothing but the bookkeeping) with a
checkpoint every ``--every`` steps, and prints the driver's RSS, the records kept in memory, the
size of the newest checkpoint (its ``trainer_state.json`` and the whole folder) and of the
step-records file, which alone grows (a line per step).

Each ends with whether the figures at the last step stay within ``--tolerance`` of those at the
first measured step.

Usage::

    .venv/bin/python benchmarks/soak.py                 # 300 outer steps, 2 workers
    .venv/bin/python benchmarks/soak.py --outer-steps 60 --every 10
    .venv/bin/python benchmarks/soak.py --backend serial --learner noop --outer-steps 20000 --every 4000
    .venv/bin/python benchmarks/soak.py --learner noop --outer-steps 20000 --every 4000

Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from stable_baselines3 import PPO

from distributed_reptile import ReptileMetaRL, TaskGenerator
from distributed_reptile.bench.learners import NoOpLearner
from distributed_reptile.checkpoint import STATE_FILE, latest_checkpoint
from distributed_reptile.runners.ray_runner import RayRunner
from distributed_reptile.tasks.families import make_cartpole_task

#: The checkpoint's task-source state: the generator's RNG and its history of the tasks drawn
#: (for revisits): a few dozen bytes per task, up to the generator's ``history_size`` tasks.
TASK_SOURCE_FILE = "task_source.pkl"

MIB = 1024 * 1024


def object_store_usage(gcs_address: str) -> tuple[float, int]:
    """``(MiB used, objects)`` of the object store, summed over nodes (Ray's memory summary)."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=gcs_address, stats_only=True)
    match = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB, (\d+) objects", text)
    if match is None:
        raise RuntimeError(f"Unexpected memory summary from Ray:\n{text}")
    return float(match.group(1)), int(match.group(2))


def rss_mib(pid: int | None) -> float:
    """Resident set size of ``pid`` in MiB (NaN when the process is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss / MIB
    except (psutil.NoSuchProcess, ValueError, TypeError):
        return float("nan")


def measure(meta: ReptileMetaRL, source_pid: int | None, gcs_address: str) -> dict[str, Any]:
    """One set of figures, taken between outer steps (nothing in flight)."""
    import ray

    gc.collect()
    me = psutil.Process()
    store_mib, store_objects = object_store_usage(gcs_address)
    core_worker = ray._private.worker.global_worker.core_worker  # type: ignore[attr-defined]
    runner = meta.runner
    assert isinstance(runner, RayRunner)
    return {
        "step": meta.num_outer_steps,
        "driver_rss": me.memory_info().rss / MIB,
        "worker_rss": [rss_mib(w.get("pid")) for w in runner.worker_info],
        "worker_pids": [w.get("pid") for w in runner.worker_info],
        "source_rss": rss_mib(source_pid),
        "store_mib": store_mib,
        "store_objects": store_objects,
        "driver_refs": len(core_worker.get_all_reference_counts()),
        "records_kib": len(pickle.dumps(meta.step_records)) / 1024,
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "wall": time.perf_counter(),
    }


def print_row(row: dict[str, Any], t0: float) -> None:
    workers = " ".join(f"{r:7.1f}" for r in row["worker_rss"])
    print(
        f"{row['step']:5d} {row['wall'] - t0:8.1f} {row['driver_rss']:10.1f}   {workers}   "
        f"{row['source_rss']:9.1f} {row['store_mib']:9.1f} {row['store_objects']:7d} "
        f"{row['driver_refs']:6d} {row['fds']:5d} {row['threads']:5d} {row['records_kib']:8.1f}",
        flush=True,
    )


def verdict(
    first: dict[str, Any], last: dict[str, Any], tolerance: float, batch_objects: int
) -> bool:
    """Print whether the last figures stay within ``tolerance`` of the first; return it.

    :param first: figures at the first measurement.
    :param last: figures at the last measurement.
    :param tolerance: allowed relative change of a resident set size.
    :param batch_objects: objects one outer step may hold in the store (weights and results).
    """
    ok = True

    def check(name: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"  {'OK  ' if passed else 'GROW'} {name}: {detail}")

    a, b = first["step"], last["step"]
    print(f"\nChecks (step {a} -> step {b}, tolerance {tolerance:.0%}):")
    growth = last["driver_rss"] / first["driver_rss"] - 1
    check(
        "driver RSS",
        abs(growth) <= tolerance,
        f"{first['driver_rss']:.1f} -> {last['driver_rss']:.1f} MiB ({growth:+.1%})",
    )
    same_workers = first["worker_pids"] == last["worker_pids"]
    for i, (r0, r1) in enumerate(zip(first["worker_rss"], last["worker_rss"], strict=True)):
        growth = r1 / r0 - 1
        note = "" if same_workers else " (worker restarted in between)"
        check(
            f"worker {i} RSS",
            abs(growth) <= tolerance,
            f"{r0:.1f} -> {r1:.1f} MiB ({growth:+.1%}){note}",
        )
    growth = last["source_rss"] / first["source_rss"] - 1
    check(
        "task-source actor RSS",
        abs(growth) <= tolerance,
        f"{first['source_rss']:.1f} -> {last['source_rss']:.1f} MiB ({growth:+.1%})",
    )
    # Freed objects leave the store a moment later: the count moves by a few between samples. A
    # leak (a kept reference per step) would add one object per outer step at least.
    bound = first["store_objects"] + batch_objects
    check(
        "object store flat",
        last["store_objects"] <= bound and last["store_mib"] <= first["store_mib"] + 1,
        f"{first['store_mib']:.1f} MiB / {first['store_objects']} objects -> "
        f"{last['store_mib']:.1f} MiB / {last['store_objects']} objects "
        f"(bound: {bound} objects, what one outer step may hold)",
    )
    check(
        "driver object refs flat",
        last["driver_refs"] <= first["driver_refs"],
        f"{first['driver_refs']} -> {last['driver_refs']}",
    )
    # Ray's own threads and sockets come and go by a few; a leak would add one per outer step.
    slack = 8
    check(
        "driver fds not growing",
        last["fds"] <= first["fds"] + slack,
        f"{first['fds']} -> {last['fds']} (slack {slack})",
    )
    check(
        "driver threads not growing",
        last["threads"] <= first["threads"] + slack,
        f"{first['threads']} -> {last['threads']} (slack {slack})",
    )
    return ok


def folder_kib(folder: Path, leave_out: tuple[str, ...] = ()) -> float:
    files = [p for p in folder.iterdir() if p.is_file() and p.name not in leave_out]
    return sum(p.stat().st_size for p in files) / 1024


def measure_serial(meta: ReptileMetaRL, save_path: Path, wall0: float) -> dict[str, Any]:
    """The serial soak's figures, taken between outer steps."""
    gc.collect()
    ckpt = latest_checkpoint(save_path, "meta_ckpt")
    assert ckpt is not None
    records_file = meta.step_history.path
    return {
        "step": meta.num_outer_steps,
        "secs": time.perf_counter() - wall0,
        "driver_rss": psutil.Process().memory_info().rss / MIB,
        "kept": len(meta.step_records),
        "records_kib": len(pickle.dumps(meta.step_records)) / 1024,
        "state_kib": (ckpt / STATE_FILE).stat().st_size / 1024,
        "source_kib": (ckpt / TASK_SOURCE_FILE).stat().st_size / 1024,
        "other_kib": folder_kib(ckpt, (STATE_FILE, TASK_SOURCE_FILE)),
        "file_mib": records_file.stat().st_size / MIB if records_file is not None else 0.0,
    }


def soak_serial(args: argparse.Namespace) -> bool:
    """Tiny outer steps in-process with a checkpoint every ``args.every`` steps; whether the
    driver's memory and the checkpoint stay flat."""
    learner = NoOpLearner if args.learner == "noop" else None
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        save_path = Path(tmp) / "checkpoints"
        meta = ReptileMetaRL(
            **soak_kwargs(args),
            backend="serial",
            **({"inner_learner_cls": learner} if learner is not None else {}),
        )
        with meta:
            print(
                f"soak: {args.outer_steps} outer steps x {args.task_batch_size} tasks, serial, "
                f"{args.learner} learner, a checkpoint every {args.every} steps in {save_path}"
            )
            print(
                f"{'step':>6} {'secs':>8} {'driver':>10} {'kept':>6} {'records':>8} "
                f"{'trainer_':>9} {'task_':>9} {'other':>8} {'records':>8}"
            )
            print(
                f"{'':>6} {'':>8} {'RSS MiB':>10} {'':>6} {'KiB':>8} {'state KiB':>9} "
                f"{'source KiB':>9} {'ckpt KiB':>8} {'file MiB':>8}"
            )
            rows = []
            t0 = time.perf_counter()
            for target in range(args.every, args.outer_steps + 1, args.every):
                meta.learn(
                    outer_steps=target,
                    reset_num_timesteps=target == args.every,
                    save_path=str(save_path),
                    keep_last=2,
                )
                rows.append(row := measure_serial(meta, save_path, t0))
                print(
                    f"{row['step']:6d} {row['secs']:8.1f} {row['driver_rss']:10.1f} "
                    f"{row['kept']:6d} {row['records_kib']:8.1f} {row['state_kib']:9.1f} "
                    f"{row['source_kib']:9.1f} {row['other_kib']:8.1f} {row['file_mib']:8.2f}",
                    flush=True,
                )
            rate = meta.num_outer_steps / rows[-1]["secs"]
            print(f"\nouter steps/s (checkpoints included): {rate:.0f}")
    first, last = rows[0], rows[-1]
    print(
        f"\nChecks (step {first['step']} -> step {last['step']}, tolerance {args.tolerance:.0%}):"
    )
    ok = True
    for name, key, slack in (
        ("driver RSS", "driver_rss", first["driver_rss"] * args.tolerance),
        ("records kept in memory", "records_kib", first["records_kib"] * args.tolerance),
        ("checkpoint trainer_state.json", "state_kib", 1.0),
        # a bounded number of records, whose numbers take more bytes as they grow (pickle
        # writes meta steps past 65,535 in 4 bytes instead of 2)
        ("checkpoint task_source.pkl", "source_kib", first["source_kib"] * args.tolerance),
        ("checkpoint, other files", "other_kib", 1.0),
    ):
        passed = last[key] <= first[key] + slack
        ok &= passed
        print(
            f"  {'OK  ' if passed else 'GROW'} {name}: {first[key]:.1f} -> {last[key]:.1f} "
            f"(allowed +{slack:.1f})"
        )
    print(f"  (the step-records file grows by design: {last['file_mib']:.2f} MiB)")
    return ok


def soak_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer arguments both soaks share (PPO on the CartPole family, tiny)."""
    return {
        "tasks_generator_cls": TaskGenerator,
        "tasks_generator_params": {
            "task_callable": make_cartpole_task,
            "history": not args.no_task_history,
            **({"history_size": args.task_history_size} if args.task_history_size else {}),
        },
        "rl_algorithm": PPO,
        "rl_algo_kwargs": {
            "policy": "MlpPolicy",
            "n_steps": 64,
            "batch_size": 32,
            "n_epochs": 2,
            "policy_kwargs": {"net_arch": [16, 16]},
        },
        "inner_steps": args.inner_steps,
        "outer_steps": args.every,
        "task_batch_size": args.task_batch_size,
        "meta_lr": 0.5,
        "seed": args.seed,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the figures; exit status 1 when something grows.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outer-steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=30, help="outer steps between measurements")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--inner-steps", type=int, default=64)
    parser.add_argument("--task-batch-size", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["ray", "serial"], default="ray")
    parser.add_argument(
        "--learner",
        choices=["ppo", "noop"],
        default="ppo",
        help="noop: return the meta weights at once (many outer steps in little time)",
    )
    parser.add_argument(
        "--no-task-history",
        action="store_true",
        help="the task generator keeps no history of the tasks drawn (no revisits)",
    )
    parser.add_argument(
        "--task-history-size",
        type=int,
        default=None,
        help="the most past tasks the generator keeps for revisits (default: the generator's, "
        "10000); the history grows by a task's description per new task until it holds that many",
    )
    args = parser.parse_args(argv)
    if args.every <= 0 or args.outer_steps < 2 * args.every:
        parser.error("--outer-steps must be at least twice --every, and --every positive.")
    if args.backend == "serial":
        ok = soak_serial(args)
        print("\nall checks hold" if ok else "\nsomething grows: see GROW above")
        return 0 if ok else 1
    import ray

    learner = {"inner_learner_cls": NoOpLearner} if args.learner == "noop" else {}
    meta = ReptileMetaRL(
        **soak_kwargs(args),
        **learner,
        num_workers=args.workers,
        backend="ray",
        ray_init_kwargs={"log_to_driver": False},
    )
    with meta:
        gcs_address = ray.get_runtime_context().gcs_address
        source: Any = meta.task_source
        source_pid = int(ray.get(source.actor.__ray_call__.remote(lambda _: os.getpid())))
        print(
            f"soak: {args.outer_steps} outer steps x {args.task_batch_size} tasks x "
            f"{args.inner_steps} env steps on {args.workers} Ray workers ({args.learner} learner, "
            "CartPole family)"
        )
        print(
            f"{'step':>5} {'secs':>8} {'driver':>10}   "
            + " ".join(f"{'w' + str(i):>7}" for i in range(args.workers))
            + f"   {'source':>9} {'store MiB':>9} {'objects':>7} {'refs':>6} {'fds':>5} {'thr':>5}"
            + f" {'records':>8}"
        )
        print(
            f"{'':>5} {'':>8} {'RSS MiB':>10}   "
            + " ".join(f"{'RSS':>7}" for _ in range(args.workers))
            + f"   {'RSS MiB':>9}{'':>46}{'KiB':>8}"
        )
        t0 = time.perf_counter()
        rows = []
        for target in range(args.every, args.outer_steps + 1, args.every):
            meta.learn(outer_steps=target, reset_num_timesteps=target == args.every)
            rows.append(measure(meta, source_pid, gcs_address))
            print_row(rows[-1], t0)
        events = getattr(meta.runner, "retry_events", [])
        rate = meta.num_outer_steps / (rows[-1]["wall"] - t0)
        print(f"\nretry events: {len(events)}; outer steps/s: {rate:.2f}")
        ok = verdict(rows[0], rows[-1], args.tolerance, 1 + args.task_batch_size)
    print("\nall checks hold" if ok else "\nsomething grows: see GROW above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
