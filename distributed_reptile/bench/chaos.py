"""A chaos run: faults at random times, together, and a run that must end as if none happened.

``python benchmarks/chaos.py [--outer-steps 100] [--nodes 2] [--workers 4] [--seed 0]``

Two runs of the same sine-regression meta-training (the Reptile paper's task family: inner loops
of milliseconds, so 100 outer steps take seconds and the faults dominate), each a driver process
checkpointing every outer step:

* the **reference**, undisturbed;
* the **chaos run**, where a seeded injector, at random outer steps, kills a learner worker from
  inside a task (``os._exit``), with ``ray.kill`` and with SIGKILL of its process, kills the
  task-source actor (at least twice), and makes one task hang past ``task_timeout_s``; where,
  with ``--nodes 2``, the second node of the cluster is lost (SIGKILL of its whole process tree:
  raylet, agents, workers) and, a few outer steps later, a fresh node joins in its place; and
  where the driver itself is SIGKILLed once (when a random step's checkpoint appears) and started
  again with a resume from its last checkpoint.

**The cluster.** With ``--nodes 2`` (the default where network namespaces can be made, see
:func:`~distributed_reptile.bench.netns.namespace_support`; else ``--nodes 1``, and a line says
why), each run gets a fresh Ray cluster that this process starts and tears down
(:mod:`distributed_reptile.bench.netns`): a head and a second node, each with half the workers'
CPUs (4 workers of 1 CPU: 2 CPUs each, so every CPU holds a worker and a lost node's workers have
nowhere to go), in one network namespace that has only ``lo``. The drivers (the reference, the
chaos run and the resumed chaos run) run in that namespace too and join the cluster by its
address; the task-source actor is pinned to the driver's node, the head. The head checks its
nodes' health every second instead of Ray's 3 s, so a lost node is declared dead in seconds
(3-4 s here) instead of about 15 s. With ``--nodes 1`` each driver starts a local Ray instance of its own, as
before.

**Node loss and join: the run waits for them.** Outer steps of sine take a fraction of a second
and noticing a lost node takes seconds, so at a planned ``node_loss`` the injector (a callback in
the driver, at the start of the step) asks this process, through a request file, to kill the
node, then holds the step until ``ray.nodes()`` shows the node dead and the pool's next look at
the cluster is due (the pool looks at most every ``CLUSTER_CHECK_EVERY_S``): that step's batch
then drops the lost node's workers (``worker_dropped`` in its step record) and runs on the
workers left. At ``node_join`` it asks for a new node and holds the step until the node is alive
with its CPUs free and a look is due: that step's batch starts the dropped workers again on it;
the next step is held until they have answered, so that the pool is back (``worker_added``) in
its record. The plan puts at least ``NODE_GAP`` outer steps between the loss and the join, two
after the join, and the driver kill outside that stretch (a driver started again while the node
is lost could not place its workers). The held seconds count in the chaos run's wall time.

Then it compares the final meta weights and the tasks drawn (bit for bit) and prints the faults
injected by kind, the faults survived, the reruns, the workers dropped and regrown (from the step
records), the wall-time overhead and "weights identical: yes/no", and writes ``chaos.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distributed_reptile.bench.chaos_driver import (
    HEAD_OBJECT_STORE,
    HEALTH_CHECK,
    NODE_OBJECT_STORE,
    POOL_EVENTS,
    drive,
    driver_kill_step,
    make_plan,
)


# ---------------------------------------------------------------------- the orchestrator
class ChaosCluster:
    """A fresh Ray cluster for one run: a head and ``nodes - 1`` worker nodes in one network
    namespace with only ``lo``; it runs the drivers there, and kills and starts the last node
    when a driver asks (:meth:`serve`)."""

    def __init__(self, nodes: int, workers: int) -> None:
        from distributed_reptile.bench.netns import ClusterNet, RayNodes

        self.nodes = nodes
        self.node_cpus = workers // nodes
        self.head_cpus = workers - (nodes - 1) * self.node_cpus
        self.workdir = Path(tempfile.mkdtemp(prefix="drch_", dir="/tmp"))  # short: socket paths
        self.net = ClusterNet(nodes - 1, veth=False)
        self.ray = RayNodes(
            self.net,
            self.workdir,
            {},
            HEAD_OBJECT_STORE,
            NODE_OBJECT_STORE,
            node_cpus=self.node_cpus,
            head_cpus=self.head_cpus,
            extra_env=HEALTH_CHECK,
        )
        #: The name of the node that a loss kills (the last one started), and how many joined.
        self.last_node = f"node{nodes - 1}"
        self.joins = 0
        #: What :meth:`serve` did: one entry per node loss or join.
        self.actions: list[dict[str, Any]] = []
        self.start_seconds = 0.0
        self.left: list[int] = []

    @property
    def address(self) -> str:
        return self.ray.address

    def start(self) -> None:
        t0 = time.perf_counter()
        self.ray.start()
        self.start_seconds = time.perf_counter() - t0

    def driver(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Run ``argv`` in the cluster's namespace (torn down with it), output to ``log``."""
        return self.ray.popen(name, self.net.head, argv, log_file=log)

    def serve(self, requests: Path) -> None:
        """Carry out the node faults asked for in ``requests`` and not done yet."""
        for request in sorted(requests.glob("*.request")):
            done = request.with_suffix(".done")
            if done.exists():
                continue
            step, kind = request.stem.split("_", 1)
            t0 = time.perf_counter()
            if kind == "node_loss":
                killed = self.ray.kill_node(self.last_node)
                info: dict[str, Any] = {"node": self.last_node, "processes_killed": len(killed)}
            elif kind == "node_join":
                self.joins += 1
                self.last_node = f"node{self.nodes - 1}j{self.joins}"
                self.ray.start_node(self.nodes - 1, self.last_node)
                info = {"node": self.last_node}
            else:
                raise RuntimeError(f"unknown request {request.name}")
            info.update(step=int(step), kind=kind, seconds=round(time.perf_counter() - t0, 2))
            self.actions.append(info)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(info), encoding="utf-8")
            tmp.replace(done)

    def close(self, keep_logs: bool = False) -> list[int]:
        """Kill everything started in the namespace; return the pids left (none)."""
        self.left = self.ray.teardown()
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.left

    def describe(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "head_cpus": self.head_cpus,
            "node_cpus": self.node_cpus,
            "network": "one network namespace with only lo; the drivers run in it too",
            "health_check": HEALTH_CHECK,
            "start_seconds": round(self.start_seconds, 1),
        }


def _driver_argv(args: argparse.Namespace, work: Path, plan: dict[int, str]) -> list[str]:
    cmd = [
        sys.executable, "-m", "distributed_reptile.bench.chaos", "--role", "driver",
        "--workdir", str(work), "--outer-steps", str(args.outer_steps),
        "--workers", str(args.workers), "--seed", str(args.seed), "--plan", json.dumps(plan),
    ]  # fmt: skip
    return cmd


class _Run:
    """The driver processes of one run (reference or chaos) and the cluster they run on."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.cluster = ChaosCluster(args.nodes, args.workers) if args.nodes >= 2 else None
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> _Run:
        try:
            if self.cluster is not None:
                self.cluster.start()
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.close(failed=exc_type is not None)

    def start_driver(self, plan: dict[int, str]) -> subprocess.Popen[Any]:
        argv = _driver_argv(self.args, self.work, plan)
        log = self.work / "driver.log"
        proc: subprocess.Popen[Any]
        if self.cluster is not None:
            argv += ["--ray-address", self.cluster.address]
            proc = self.cluster.driver(f"driver{len(self.procs)}", argv, log)
        else:
            env = dict(os.environ)
            env.pop("RAY_ADDRESS", None)
            with open(log, "a", encoding="utf-8") as fh:
                proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def supervise(self, proc: subprocess.Popen[Any], t0: float, kill_at: int | None = None) -> None:
        """Wait for the driver ``proc`` to end, carrying out its node requests; with ``kill_at``,
        SIGKILL it once the checkpoint of that step appears (it must not end before)."""
        marker = self.work / "checkpoints" / f"meta_ckpt_outer_{kill_at}" / "MANIFEST.json"
        while True:
            if kill_at is not None and marker.exists():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            if self.cluster is not None:
                self.cluster.serve(self.work / "requests")
            rc = proc.poll()
            if rc is not None:
                if kill_at is not None:
                    raise RuntimeError(f"the chaos run ended early: see {self.work / 'driver.log'}")
                if rc != 0:
                    raise RuntimeError(f"a driver exited with {rc}: see {self.work / 'driver.log'}")
                return
            if time.perf_counter() - t0 > self.args.timeout:
                proc.kill()
                raise RuntimeError(f"the run did not end within {self.args.timeout:g} s")
            time.sleep(0.05)

    def close(self, failed: bool = False) -> None:
        from distributed_reptile.bench.netns import kill_tree

        for proc in self.procs:
            if proc.poll() is None:
                kill_tree(proc.pid)
        if self.cluster is not None:
            self.cluster.close(keep_logs=failed)
            if failed:
                print(f"chaos: the cluster's logs are in {self.cluster.workdir}", file=sys.stderr)


def _weights_hash(work: Path, outer_steps: int) -> str:
    path = work / "checkpoints" / f"meta_ckpt_outer_{outer_steps}" / "meta_policy.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _step_records(work: Path) -> dict[str, Any]:
    """Reruns and pool changes, from the step records (``meta_ckpt_step_records.jsonl``)."""
    path = work / "checkpoints" / "meta_ckpt_step_records.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines if line]
    events = [(r["outer_step"], e) for r in records for e in r.get("retries", [])]
    pool = [
        {"outer_step": step, "kind": e["kind"], "worker": e["worker"], "workers": e["workers"]}
        for step, e in events
        if e["kind"] in POOL_EVENTS
    ]
    dropped = [p for p in pool if p["kind"] == "worker_dropped"]
    return {
        "retries": sum(1 for _, e in events if e["kind"] not in POOL_EVENTS),
        "retries_by_kind": _count(e["kind"] for _, e in events if e["kind"] not in POOL_EVENTS),
        "workers_dropped": len(dropped),
        "workers_regrown": sum(1 for p in pool if p["kind"] == "worker_added"),
        "fewest_workers": min((p["workers"] for p in dropped), default=None),
        "pool_events": pool,
    }


def _count(kinds: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in kinds:
        out[kind] = out.get(kind, 0) + 1
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """The reference run, the chaos run (with a driver kill and resume), and the comparison."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _orchestrate(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="chaos_"))
    ref, chaos = root / "reference", root / "chaos"
    for folder in (ref, chaos):
        folder.mkdir(parents=True, exist_ok=True)
    clusters: dict[str, Any] = {}

    with _Run(args, ref) as run:
        t0 = time.perf_counter()
        run.supervise(run.start_driver({}), t0)
        ref_wall = time.perf_counter() - t0
    if run.cluster is not None:
        clusters["reference"] = {**run.cluster.describe(), "processes_left": run.cluster.left}

    plan = make_plan(args.outer_steps, args.seed, args.nodes)
    kill_at = driver_kill_step(args.outer_steps, args.seed, plan)
    with _Run(args, chaos) as run:
        t0 = time.perf_counter()
        run.supervise(run.start_driver(plan), t0, kill_at=kill_at)
        # the killed driver's workers go with it (with --nodes 1, its whole local Ray instance:
        # its processes are the driver's children); the resumed driver starts new ones
        resumed = {s: k for s, k in plan.items() if s >= kill_at}
        run.supervise(run.start_driver(resumed), t0)
        chaos_wall = time.perf_counter() - t0
    node_actions: list[dict[str, Any]] = []
    if run.cluster is not None:
        clusters["chaos"] = {**run.cluster.describe(), "processes_left": run.cluster.left}
        node_actions = run.cluster.actions

    by_kind = _count(f["kind"] for f in _jsonl(chaos / "faults.jsonl"))
    by_kind["driver_sigkill"] = 1
    same_weights = _weights_hash(ref, args.outer_steps) == _weights_hash(chaos, args.outer_steps)
    same_tasks = (ref / "history.json").read_text() == (chaos / "history.json").read_text()
    records = _step_records(chaos)
    report = {
        "outer_steps": args.outer_steps,
        "nodes": args.nodes,
        "nodes_note": args.nodes_note,
        "workers": args.workers,
        "seed": args.seed,
        "plan": {str(s + 1): k for s, k in sorted(plan.items())},
        "faults_injected": dict(sorted(by_kind.items())),
        "faults_total": sum(by_kind.values()),
        "faults_survived": sum(by_kind.values()),  # the run finished: every one was survived
        "driver_killed_after_step": kill_at,
        **records,
        "node_actions": node_actions,
        "node_gates": _jsonl(chaos / "gates.jsonl"),
        "clusters": clusters,
        "reference_wall_seconds": round(ref_wall, 2),
        "chaos_wall_seconds": round(chaos_wall, 2),
        "wall_overhead": round(chaos_wall / ref_wall - 1.0, 3),
        "weights_identical": same_weights,
        "tasks_identical": same_tasks,
        "workdir": str(root),
    }
    return report


def _resolve_nodes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--nodes`` and ``--workers`` defaults; ``args.nodes_note`` says why one node if so."""
    args.nodes_note = None
    if args.nodes is None or args.nodes >= 2:
        from distributed_reptile.bench.netns import namespace_support

        reason = namespace_support()
        if args.nodes is None:
            args.nodes = 2 if reason is None else 1
            if reason is not None:
                args.nodes_note = f"network namespaces cannot be made here: {reason}"
                print(f"chaos: running on one node (--nodes 1): {args.nodes_note}")
        elif reason is not None:
            parser.error(f"--nodes {args.nodes} runs the nodes in a network namespace: {reason}")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.workers is None:
        args.workers = 4 if args.nodes >= 2 else 2
    if args.workers < args.nodes:
        parser.error(f"--workers must be at least --nodes ({args.nodes}): a worker on each node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outer-steps", type=int, default=100, help="outer steps of each run")
    parser.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="Ray nodes: 2 or more, a cluster in a network namespace, with a node lost and one "
        "joining; 1, a local Ray instance per driver (default: 2 where namespaces can be made)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="Ray workers (default: 4 with 2 nodes, else 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed and fault plan seed")
    parser.add_argument("--workdir", default=None, help="folder of both runs (default: a temp dir)")
    parser.add_argument("--output", default=None, help="write chaos.json here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--role", choices=["orchestrate", "driver"], default="orchestrate", help=argparse.SUPPRESS
    )
    parser.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ray-address", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.outer_steps < 10:
        parser.error("--outer-steps must be at least 10 (room for every fault)")
    if args.role == "driver":
        return drive(args)
    _resolve_nodes(args, parser)
    report = orchestrate(args)
    _print(report)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "chaos.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if report["weights_identical"] and report["tasks_identical"] else 1


def _print(report: dict[str, Any]) -> None:
    cluster = report["clusters"].get("chaos")
    if cluster is not None:
        print(
            f"cluster: {cluster['nodes']} nodes (head {cluster['head_cpus']} CPUs, "
            f"{cluster['nodes'] - 1} x {cluster['node_cpus']} CPUs), {report['workers']} workers, "
            "one network namespace with only lo"
        )
    else:
        print(f"cluster: 1 node (a local Ray instance per driver), {report['workers']} workers")
    print(
        "faults injected:",
        ", ".join(f"{k} {v}" for k, v in sorted(report["faults_injected"].items())),
    )
    print(f"faults survived: {report['faults_survived']} of {report['faults_total']}")
    print(f"reruns (step records): {report['retries']}")
    if cluster is not None:
        fewest = report["fewest_workers"]
        down = f" (down to {fewest} of {report['workers']})" if fewest is not None else ""
        print(
            f"workers dropped: {report['workers_dropped']}{down}, "
            f"regrown: {report['workers_regrown']} (step records)"
        )
    print(
        f"wall time: {report['chaos_wall_seconds']} s against {report['reference_wall_seconds']} s "
        f"undisturbed (overhead {100 * report['wall_overhead']:.0f}%)"
    )
    print(f"weights identical: {'yes' if report['weights_identical'] else 'no'}")
    print(f"tasks drawn identical: {'yes' if report['tasks_identical'] else 'no'}")


if __name__ == "__main__":
    sys.exit(main())
