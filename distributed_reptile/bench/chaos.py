"""A chaos run: faults at random times, together, and a run that must end as if none happened.

``python benchmarks/chaos.py [--outer-steps 100] [--workers 2] [--seed 0]``

Two runs of the same sine-regression meta-training (the Reptile paper's task family: inner loops
of milliseconds, so 100 outer steps take seconds and the faults dominate), each a driver process
on a local Ray instance of its own, checkpointing every outer step:

* the **reference**, undisturbed;
* the **chaos run**, where a seeded injector, at random outer steps, kills a learner worker from
  inside a task (``os._exit``), with ``ray.kill`` and with SIGKILL of its process, kills the
  task-source actor (at least twice), and makes one task hang past ``task_timeout_s``; and where
  the driver itself is SIGKILLed once (when a random step's checkpoint appears) and started again
  with a resume from its last checkpoint.

Then it compares the final meta weights and the tasks drawn (bit for bit) and prints the faults
injected by kind, the faults survived, the reruns, the wall-time overhead and "weights identical:
yes/no", and writes ``chaos.json``. Losing a node of a multi-node cluster is exercised by the
multi-node tests (``tests/test_multinode.py``), not here: this run has one node.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob
from distributed_reptile.weights import NumpyWeights

#: The environment variable that tells the learners where the fault markers are.
CHAOS_DIR_ENV = "DISTRIBUTED_REPTILE_CHAOS_DIR"
#: Faults the injector plans (the driver kill is the orchestrator's).
KINDS = ("exit_in_task", "ray_kill", "sigkill", "task_source", "hang")
#: Seconds a task may run before it is cancelled and rerun (the hang lasts twice as long).
TASK_TIMEOUT_S = 4.0


class ChaosLearner(InnerLearner):
    """An inner learner that, before a task, takes a fault marker if one is left for it (each
    marker is taken by exactly one task: whoever removes the file) and exits or hangs."""

    def run(self, job: TaskJob, meta_weights: NumpyWeights) -> AdaptedResult:
        folder = os.environ.get(CHAOS_DIR_ENV)
        if folder:
            if _take(Path(folder) / "exit"):
                os._exit(1)
            if _take(Path(folder) / "hang"):
                time.sleep(2 * TASK_TIMEOUT_S)
        return super().run(job, meta_weights)


def _take(marker: Path) -> bool:
    try:
        marker.unlink()
        return True
    except FileNotFoundError:
        return False


class FaultInjector(MetaCallback):
    """At the planned outer steps, injects the planned fault and logs it (one JSON line each)."""

    def __init__(self, plan: dict[int, str], folder: Path, log: Path, seed: int) -> None:
        super().__init__()
        self.plan, self.folder, self.log = plan, folder, log
        self.rng = random.Random(seed)

    def _on_outer_step_start(self, outer_step: int) -> None:
        kind = self.plan.get(outer_step)
        if kind is None:
            return
        import ray

        assert self.trainer is not None
        runner: Any = self.trainer.runner
        worker: int | None = self.rng.randrange(len(runner.actors))
        if kind in ("exit_in_task", "hang"):
            worker = None  # whichever worker takes the marker
            (self.folder / ("exit" if kind == "exit_in_task" else "hang")).touch()
        elif kind == "ray_kill":
            ray.kill(runner.actors[worker], no_restart=False)  # Ray restarts it
        elif kind == "sigkill":
            pid = runner.worker_info[worker].get("pid")
            # mid-step: a short while after the step's tasks went out
            threading.Timer(self.rng.uniform(0.0, 0.05), _sigkill, args=(pid,)).start()
        elif kind == "task_source":
            ray.kill(ray.get_actor(getattr(self.trainer.task_source, "name", "")))
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": outer_step + 1, "kind": kind, "worker": worker}) + "\n")


def _sigkill(pid: int | None) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def make_plan(outer_steps: int, seed: int) -> dict[int, str]:
    """Outer step (0-based) -> fault: each kind once, the task source twice, at random steps
    (none in the first two steps, so the workers and the source are up)."""
    kinds = [*KINDS, "task_source"]
    steps = random.Random(seed).sample(range(2, outer_steps), len(kinds))
    return dict(zip(steps, kinds, strict=True))


def _trainer_kwargs(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    from distributed_reptile import TaskGenerator
    from distributed_reptile.sine import SupervisedRegressor, make_sine_task

    return {
        "tasks_generator_cls": TaskGenerator,
        "tasks_generator_params": {"task_callable": make_sine_task},
        "rl_algorithm": SupervisedRegressor,
        "rl_algo_kwargs": {
            "policy": "MlpRegressor",
            "device": "cpu",
            "learning_rate": 0.001,
            "betas": [0.0, 0.999],
            "batch_size": 10,
            "net_arch": [64, 64],
        },
        "inner_steps": 320,
        "outer_steps": args.outer_steps,
        "task_batch_size": 4,
        "meta_lr": 0.5,
        "seed": args.seed,
        "backend": "ray",
        "num_workers": args.workers,
        "task_timeout_s": TASK_TIMEOUT_S,
        "task_retries": 3,
        "inner_learner_cls": ChaosLearner,
        "ray_init_kwargs": {
            "num_cpus": max(2, args.workers),
            "log_to_driver": False,
            "runtime_env": {"env_vars": {CHAOS_DIR_ENV: folder}},
        },
    }


def drive(args: argparse.Namespace) -> int:
    """One driver process: train (or resume from the newest checkpoint) to the end."""
    from distributed_reptile import ReptileMetaRL
    from distributed_reptile.checkpoint import latest_checkpoint

    work = Path(args.workdir)
    save = work / "checkpoints"
    folder = work / "markers"
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = _trainer_kwargs(args, str(folder))
    plan = {int(k): v for k, v in json.loads(args.plan).items()} if args.plan else {}
    last = latest_checkpoint(save, "meta_ckpt")
    if last is not None:
        trainer = ReptileMetaRL.load(last, **{k: kwargs[k] for k in ("ray_init_kwargs",)})
    else:
        trainer = ReptileMetaRL(**kwargs)
    with trainer:
        injector = FaultInjector(
            plan, folder, work / "faults.jsonl", args.seed + trainer.num_outer_steps
        )
        trainer.learn(
            save_path=str(save),
            save_freq=1,
            keep_last=2,
            reset_num_timesteps=last is None,
            callback=[injector],
        )
        history = trainer.task_source.history()
    (work / "history.json").write_text(json.dumps(history), encoding="utf-8")
    return 0


def _driver(args: argparse.Namespace, work: Path, plan: dict[int, str]) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "distributed_reptile.bench.chaos",
        "--role",
        "driver",
        "--workdir",
        str(work),
        "--outer-steps",
        str(args.outer_steps),
        "--workers",
        str(args.workers),
        "--seed",
        str(args.seed),
        "--plan",
        json.dumps(plan),
    ]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    log = open(work / "driver.log", "a", encoding="utf-8")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _weights_hash(work: Path, outer_steps: int) -> str:
    path = work / "checkpoints" / f"meta_ckpt_outer_{outer_steps}" / "meta_policy.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _retries(work: Path) -> int:
    path = work / "checkpoints" / "meta_ckpt_step_records.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return sum(len(r.get("retries", [])) for r in lines)


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """The reference run, the chaos run (with a driver kill and resume), and the comparison."""
    root = Path(args.workdir or tempfile.mkdtemp(prefix="chaos_"))
    ref, chaos = root / "reference", root / "chaos"
    for folder in (ref, chaos):
        folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = _driver(args, ref, {})
    if proc.wait(timeout=args.timeout) != 0:
        raise RuntimeError(f"the reference run failed: see {ref / 'driver.log'}")
    ref_wall = time.perf_counter() - t0

    plan = make_plan(args.outer_steps, args.seed)
    kill_at = random.Random(args.seed + 1).randrange(3, args.outer_steps - 1)
    t0 = time.perf_counter()
    proc = _driver(args, chaos, plan)
    marker = chaos / "checkpoints" / f"meta_ckpt_outer_{kill_at}"
    while not (marker / "MANIFEST.json").exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the chaos run ended early: see {chaos / 'driver.log'}")
        if time.perf_counter() - t0 > args.timeout:
            proc.kill()
            raise RuntimeError(f"no checkpoint of step {kill_at} within {args.timeout} s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the killed driver's local Ray instance goes with it (its processes are the driver's
    # children); the resumed driver starts a new one
    proc = _driver(args, chaos, {s: k for s, k in plan.items() if s >= kill_at})
    if proc.wait(timeout=args.timeout) != 0:
        raise RuntimeError(f"the resumed chaos run failed: see {chaos / 'driver.log'}")
    chaos_wall = time.perf_counter() - t0

    faults = [
        json.loads(line)
        for line in (chaos / "faults.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    ]
    by_kind: dict[str, int] = {}
    for fault in faults:
        by_kind[fault["kind"]] = by_kind.get(fault["kind"], 0) + 1
    by_kind["driver_sigkill"] = 1
    same_weights = _weights_hash(ref, args.outer_steps) == _weights_hash(chaos, args.outer_steps)
    same_tasks = (ref / "history.json").read_text() == (chaos / "history.json").read_text()
    report = {
        "outer_steps": args.outer_steps,
        "workers": args.workers,
        "seed": args.seed,
        "faults_injected": by_kind,
        "faults_total": sum(by_kind.values()),
        "faults_survived": sum(by_kind.values()),  # the run finished: every one was survived
        "driver_killed_after_step": kill_at,
        "retries": _retries(chaos),
        "reference_wall_seconds": round(ref_wall, 2),
        "chaos_wall_seconds": round(chaos_wall, 2),
        "wall_overhead": round(chaos_wall / ref_wall - 1.0, 3),
        "weights_identical": same_weights,
        "tasks_identical": same_tasks,
        "workdir": str(root),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outer-steps", type=int, default=100, help="outer steps of each run")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers")
    parser.add_argument("--seed", type=int, default=0, help="run seed and fault plan seed")
    parser.add_argument("--workdir", default=None, help="folder of both runs (default: a temp dir)")
    parser.add_argument("--output", default=None, help="write chaos.json here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per driver")
    parser.add_argument(
        "--role", choices=["orchestrate", "driver"], default="orchestrate", help=argparse.SUPPRESS
    )
    parser.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.outer_steps < 10:
        parser.error("--outer-steps must be at least 10 (room for every fault)")
    if args.role == "driver":
        return drive(args)
    report = orchestrate(args)
    print(
        "faults injected:",
        ", ".join(f"{k} {v}" for k, v in sorted(report["faults_injected"].items())),
    )
    print(f"faults survived: {report['faults_survived']} of {report['faults_total']}")
    print(f"reruns (step records): {report['retries']}")
    print(
        f"wall time: {report['chaos_wall_seconds']} s against {report['reference_wall_seconds']} s "
        f"undisturbed (overhead {100 * report['wall_overhead']:.0f}%)"
    )
    print(f"weights identical: {'yes' if report['weights_identical'] else 'no'}")
    print(f"tasks drawn identical: {'yes' if report['tasks_identical'] else 'no'}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "chaos.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if report["weights_identical"] and report["tasks_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
