"""Cluster: what the driver pays per outer step when the inner loops run on several nodes.

A real Ray cluster on this machine (:mod:`distributed_reptile.bench.netns`): a head and ``N``
worker nodes, each in its own network namespace, joined by veth pairs to a bridge in the head's
namespace, where the driver runs (re-run there with ``nsenter``). The trainer is the real
``ReptileMetaRL`` on the Ray backend joined to that cluster, with a learner that sleeps a fixed
time and returns the meta weights shifted by a constant drawn from the task's seed
(:class:`~distributed_reptile.bench.cluster_driver.ShiftLearner`: no CPU but one pass over the weights), on a PPO policy sized to ``P``
parameters. ``--workers-per-node`` learner workers (0.01 CPU each) sit on every worker node
(custom resource ``bench_worker``), none on the head.

Three modes side by side (``--modes`` picks some), per ``P`` and ``B`` (tasks per outer step):

* ``flat``: :class:`~distributed_reptile.bench.cluster_driver.FlatReptile` (``combine = "all"``): every task's adapted weights go to the
  driver, which sums them exactly itself;
* ``reduced``: ``ReptileMetaRL`` (``combine = "sum"``, ``tasks_per_call`` from
  ``--tasks-per-call``, ``"auto"`` by default, ``node_reduction=False``): each actor call sends one
  int64 partial sum;
* ``node``: the same with ``node_reduction=True`` (what ``"auto"`` picks on several nodes): the
  calls keep their sums on their nodes, which combine them, and the step's mean, made by the
  last combine, reaches the driver.

Per outer step: driver CPU seconds (``time.process_time``), bytes into and out of the driver's
node (the bridge's counters) and per node (its veth's), step time beyond the sleep, peak driver
RSS. Each ``(P, B)`` starts from the same meta weights in every mode, and the modes' meta weights
after it are compared bit for bit. The issue's targets are read on ``node`` (``reduced`` when
``node`` is not run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from distributed_reptile.bench.cluster_driver import MODES
from distributed_reptile.bench.cluster_report import (
    plot,
    print_results,
    summarize_group,
    targets,
    weights_check,
)
from distributed_reptile.bench.common import (
    MB,
    BenchInputError,
    CpuMeter,
    new_report,
    parse_choice_list,
    parse_int_list,
    write_report,
)
from distributed_reptile.bench.netns import ClusterNet, RayNodes, namespace_support
from distributed_reptile.settings import tasks_per_call_arg

NAME = "cluster"
#: Memory of one idle node (raylet, agents, an idle worker) and of one learner actor, for the check.
NODE_MEMORY_ESTIMATE = 400 * MB
ACTOR_MEMORY_ESTIMATE = 250 * MB
DRIVER_CODE = (
    "import sys\nfrom distributed_reptile.bench.cluster_driver import driver_main\n"
    "sys.exit(driver_main(sys.argv[1]))\n"
)


# ---------------------------------------------------------------------- the plan
def plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``(mode, P, B)`` groups to run, and those skipped with the reason."""
    groups, skipped = [], []
    for size in args.size_list:
        for mode in args.mode_list:
            for batch in args.task_list:
                entry = {"mode": mode, "params_target": size, "batch": batch}
                reason = _skip_reason(mode, size, batch, args)
                if reason is None:
                    groups.append(entry)
                else:
                    skipped.append({**entry, "reason": reason})
    return groups, skipped


def _skip_reason(mode: str, size: int, batch: int, args: argparse.Namespace) -> str | None:
    if mode == "flat":
        held, what = batch * size * 4, f"{batch} tasks' float32 weights"
    else:
        calls = min(batch, args.nodes * args.workers_per_node)
        held, what = calls * size * 8, f"{calls} int64 partial sums"
    if held > args.max_step_gib * 2**30:
        return (
            f"{what} make {held / 1e9:.1f} GB per outer step, above --max-step-gib "
            f"{args.max_step_gib:g} GiB: more than the object stores and the driver could hold "
            "at once on this machine"
        )
    if args.max_work and batch * size > args.max_work:
        return (
            f"B x P = {batch * size:.3g} above --max-work {args.max_work:g}: left out to keep this "
            "run short (each task costs a pass over the P weights)"
        )
    return None


# ---------------------------------------------------------------------- the benchmark process
def _check(args: argparse.Namespace) -> None:
    args.task_list = parse_int_list(args.tasks, "--tasks")
    args.size_list = parse_int_list(args.sizes, "--sizes")
    args.mode_list = parse_choice_list(args.modes, MODES, "--modes")
    for name in ("nodes", "workers_per_node", "outer_steps"):
        if getattr(args, name) <= 0:
            raise BenchInputError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}."
            )
    if args.sleep < 0 or args.worker_cpus <= 0 or args.max_step_gib <= 0 or args.slow_factor < 1:
        raise BenchInputError(
            "--sleep must be >= 0, --worker-cpus and --max-step-gib > 0, --slow-factor >= 1."
        )
    reason = namespace_support()
    if reason is not None:
        raise BenchInputError(f"bench cluster runs its nodes in network namespaces: {reason}.")
    workers = args.nodes * args.workers_per_node
    needed = (args.nodes + 1) * NODE_MEMORY_ESTIMATE + workers * ACTOR_MEMORY_ESTIMATE
    available = psutil.virtual_memory().available
    if needed > 0.8 * available:
        raise BenchInputError(
            f"{args.nodes} nodes and {workers} workers need about {needed / 2**30:.1f} GiB and "
            f"{available / 2**30:.1f} GiB is available: lower --nodes or --workers-per-node."
        )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the cluster benchmark; returns the report (also written to ``args.out_dir``)."""
    _check(args)
    groups, skipped = plan(args)
    workers = args.nodes * args.workers_per_node
    settings = {
        "nodes": args.nodes,
        "workers_per_node": args.workers_per_node,
        "workers": workers,
        "placement": "learner workers only on the worker nodes (custom resource bench_worker = "
        "workers_per_node on each), none on the head, which holds the driver and the task source",
        "worker_resources": {"num_cpus": args.worker_cpus, "bench_worker": 1},
        "tasks_per_outer_step": args.task_list,
        "sizes_target": args.size_list,
        "sleep_seconds": args.sleep,
        "measured_outer_steps": args.outer_steps,
        "warmup": "one outer step per trainer, before its first B; every (P, B) then starts "
        "from the same meta weights (outer step 0, task seeds from meta steps) in both modes",
        "modes": {
            mode: text
            for mode, text in {
                "flat": f"FlatReptile (combine='all'), tasks_per_call={args.flat_tasks_per_call}: "
                "every task's float32 weights to the driver, which sums them exactly",
                "reduced": f"ReptileMetaRL (combine='sum'), tasks_per_call={args.tasks_per_call!r}, "
                "node_reduction=False: one int64 partial sum per actor call to the driver",
                "node": f"ReptileMetaRL (combine='sum'), tasks_per_call={args.tasks_per_call!r}, "
                "node_reduction=True: the calls' sums combined on their nodes, then on one "
                "worker, which makes the mean; one float32 mean per outer step to the driver",
            }.items()
            if mode in args.mode_list
        },
        "learner": "ShiftLearner: sleeps, returns the meta weights plus a constant from the "
        "task's seed; builds no env and no model",
        "policy": "PPO MlpPolicy, net_arch=dict(pi=[w, w], vf=[w, w]), CartPole family",
        "max_step_gib": args.max_step_gib,
        "max_work": args.max_work,
        "object_store_mib": {
            "head": args.head_object_store_mib,
            "node": args.node_object_store_mib,
        },
        "driver_cpu": "time.process_time() of the driver process (all its threads, Ray's "
        "included, the memory sampler's own thread left out) from the start of an outer step to "
        "its end (sampling, dispatch, collection, meta-update, record)",
        "bytes": "driver_node_in/out: rx/tx bytes of the bridge in the head's namespace (frames "
        "the worker nodes' veths delivered to the head node, and sent by it); nodes.<k>: node k's "
        "veth (in = tx, out = rx, at its head end); nodes_out_sum: everything the worker nodes "
        "sent, node-to-node traffic included. Frame bytes (Ethernet/IP/TCP headers; network.mtu), "
        "idle traffic of Ray included (network.idle_bytes_per_second)",
        "memory": "peak RSS of the driver process, sampled every 5 ms by a thread",
        "slow_factor": args.slow_factor,
        "calls": "actor calls of an outer step with every worker up and all alike "
        "(ChunkPlan.sizes; guided calls also follow the workers' measured speeds)",
        "beyond_sleep": "trainer step_seconds - the least time the step's sleeps take: "
        "ceil(B / workers) * sleep_seconds, or with a slow worker (--slow-factor F > 1) "
        "B * sleep_seconds / (workers - 1 + 1 / F)",
        "task_source": "source_cpu_seconds: user + system CPU of the task-source actor's process "
        "over the outer step, in the kernel's clock ticks (10 ms) (it draws the next steps' tasks "
        "while this step's inner loops run); "
        "sample_seconds: the driver's wait for the step's tasks (the trainer's record)",
        "seed": args.seed,
    }
    report = new_report(NAME, settings)
    meter = CpuMeter()
    workdir = Path(tempfile.mkdtemp(prefix="drcl_", dir="/tmp"))  # short: Ray's socket paths
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    net = nodes = None
    ok = False
    raw: dict[str, Any] = {}
    try:
        net = ClusterNet(args.nodes, veth=not args.no_veth)
        nodes = RayNodes(
            net,
            workdir,
            {"bench_worker": args.workers_per_node},
            args.head_object_store_mib * MB,
            args.node_object_store_mib * MB,
        )
        t0 = time.perf_counter()
        nodes.start()
        start_seconds = time.perf_counter() - t0
        print(
            f"{args.nodes + 1} Ray nodes up in {start_seconds:.1f} s ({net.describe()['topology']})"
        )
        raw_path = workdir / "raw.json"
        spec = {
            "address": nodes.address, "head_ip": net.head_ip, "interfaces": net.interfaces(),
            "node_ips": {f"node{k}": net.node_ip(k) for k in range(1, args.nodes + 1)},
            "nodes": args.nodes, "workers": workers, "sizes": args.size_list, "groups": groups,
            "sleep": args.sleep, "worker_cpus": args.worker_cpus, "outer_steps": args.outer_steps,
            "flat_tasks_per_call": args.flat_tasks_per_call, "seed": args.seed,
            "tasks_per_call": args.tasks_per_call, "slow_factor": args.slow_factor,
            "modes": args.mode_list,
            "raw_path": str(raw_path),
        }  # fmt: skip
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        driver = nodes.popen(
            "driver", net.head, [sys.executable, "-c", DRIVER_CODE, str(spec_path)],
            own_sysfs=net.per_node_bytes, to_log=False,
        )  # fmt: skip
        rc = driver.wait()
        if raw_path.exists():
            raw = json.loads(raw_path.read_text(encoding="utf-8"))
        if rc != 0:
            raise RuntimeError(f"the benchmark's driver exited with {rc}; Ray's logs: {workdir}")
        ok = True
    except KeyboardInterrupt:
        ok = True  # nothing to look into: the logs go too
        raise
    finally:
        left = nodes.teardown() if nodes is not None else []
        if nodes is None and net is not None:
            net.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"bench cluster failed: the nodes' logs are in {workdir}", file=sys.stderr)
    report["cpu"] = meter.summary()
    report["network"] = {**net.describe(), "counter_source": raw.get("counter_source"),
                         "idle_bytes_per_second": raw.get("idle_bytes_per_second")}  # fmt: skip
    if not net.per_node_bytes:
        report["network"]["note"] = (
            "all nodes in one loopback-only namespace: no bytes per node or into the driver's node"
        )
    report["cluster"] = {"start_seconds": start_seconds, "node_labels": raw.get("node_labels"),
                         "trainers": raw.get("trainers"), "workdir": str(workdir),
                         "processes_left": left}  # fmt: skip
    report["stats_bytes_per_task"] = raw.get("stats_bytes_per_task")
    report["skipped"] = skipped
    report["results"] = [summarize_group(g, args, workers) for g in raw.get("groups", [])]
    report.update(weights_check(raw.get("groups", [])))
    print_results(report["results"], skipped)
    same = {True: "yes", False: "NO", None: "not checked"}[report["weights_identical"]]
    pairs = report["weights_check"]["pairs"]
    print(f"weights identical across modes: {same} ({len(pairs)} pairs of runs)")
    write_report(args.out_dir, report, targets(report, args), lambda fig: plot(fig, report))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster benchmark's options."""
    half = psutil.virtual_memory().total / 2**31
    parser.add_argument("--nodes", type=int, default=4, help="Ray worker nodes (besides the head)")
    parser.add_argument("--workers-per-node", type=int, default=2, help="learner workers per node")
    parser.add_argument("--tasks", default="16,64,256,1024", help="tasks per outer step (B)")
    parser.add_argument("--sizes", default="1e4,1e6,1e7", help="policy sizes in parameters (P)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"modes to run, of {', '.join(MODES)}"
    )
    parser.add_argument("--sleep", type=float, default=0.02, help="seconds each task sleeps")
    parser.add_argument(
        "--outer-steps", type=int, default=2, help="measured outer steps per (P, B)"
    )
    parser.add_argument("--worker-cpus", type=float, default=0.01, help="Ray CPUs of each worker")
    parser.add_argument(
        "--flat-tasks-per-call", type=int, default=1, help="tasks_per_call of the flat mode"
    )
    parser.add_argument(
        "--tasks-per-call",
        type=tasks_per_call_arg,
        default="auto",
        help="tasks_per_call of the reduced and node modes: auto, guided or an integer",
    )
    parser.add_argument(
        "--slow-factor",
        type=float,
        default=1.0,
        help="one worker sleeps this many times longer per task (1: none)",
    )
    parser.add_argument(
        "--max-step-gib",
        type=float,
        default=round(half, 1),
        help="skip a (mode, P, B) whose results per outer step exceed this (default: half the memory)",
    )
    parser.add_argument(
        "--max-work", type=float, default=0.0, help="skip a (P, B) with B x P above this (0: none)"
    )
    parser.add_argument(
        "--head-object-store-mib", type=int, default=4096, help="head's object store"
    )
    parser.add_argument(
        "--node-object-store-mib", type=int, default=1024, help="each node's object store"
    )
    parser.add_argument(
        "--no-veth",
        action="store_true",
        help="all nodes in one loopback namespace (no bytes per node)",
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed")
