"""Profile the Ray backend with py-spy: the driver and every worker actor, during a few outer steps.

``python benchmarks/profile_ray.py [--workers 2] [--outer-steps 3] [--out-dir profiles]``
``python benchmarks/profile_ray.py --sleep 1.0 --workers 64 --out-dir profiles_sleep``

Runs the scaling benchmark's default workload (PPO on the CartPole family, 2048-step inner loops,
8 tasks per outer step) on the Ray backend, or with ``--sleep S`` the overhead benchmark's sleep
learner (one task per actor, ``num_cpus=0.01`` each). After one warm-up step it starts
``py-spy record`` on the driver and on the first ``--profile-workers`` worker pids
(``meta.runner.worker_info``), runs the measured outer steps, and writes one flame graph per
process plus a ``py-spy dump`` of each taken mid-step. It also prints
each process's CPU seconds during the measured steps, which shows whether the workers kept their
cores busy and what the driver spent. Needs py-spy (``pip install py-spy``) and permission to trace
the processes (root, or ``ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from distributed_reptile import ReptileMetaRL
from distributed_reptile.bench.common import ray_running, tree_cpu_seconds
from distributed_reptile.bench.learners import SleepLearner
from distributed_reptile.bench.workload import Workload


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far."""
    out = {}
    for label, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[label] = t.user + t.system
        except psutil.Error:
            out[label] = float("nan")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outer-steps", type=int, default=3)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out-dir", default="profiles")
    parser.add_argument("--sleep", type=float, default=0.0, help="sleep learner of S seconds")
    parser.add_argument("--profile-workers", type=int, default=2, help="workers to run py-spy on")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.sleep > 0:
        workload = Workload(task_batch_size=args.workers)
        extra = {
            "inner_learner_cls": SleepLearner,
            "inner_loop_params": {"sleep_seconds": args.sleep},
            "worker_resources": {"num_cpus": 0.01},
        }
    else:
        workload, extra = Workload(), {}
    with ray_running(num_cpus=max(4, args.workers + 1)):
        kwargs = workload.trainer_kwargs("ray", num_workers=args.workers, **extra)
        with ReptileMetaRL(**kwargs) as meta:
            pids = {"driver": os.getpid()}
            info = list(getattr(meta.runner, "worker_info", []))[: args.profile_workers]
            pids.update({f"worker{i}": w["pid"] for i, w in enumerate(info)})
            meta.learn(outer_steps=1)
            procs = [
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(args.rate),
                        "--nonblocking",
                        "--output",
                        str(out / f"{label}.svg"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for label, pid in pids.items()
            ]
            time.sleep(1.0)  # let py-spy attach

            def dump_mid_step() -> None:
                time.sleep(2.0)
                for label, pid in pids.items():
                    dump = subprocess.run(
                        [py_spy, "dump", "--pid", str(pid), "--nonblocking"],
                        capture_output=True,
                        text=True,
                    )
                    (out / f"{label}_dump.txt").write_text(
                        dump.stdout + dump.stderr, encoding="utf-8"
                    )

            dumper = threading.Thread(target=dump_mid_step)
            dumper.start()
            before = cpu_seconds(pids)
            tree0 = tree_cpu_seconds()
            t0 = time.perf_counter()
            meta.learn(outer_steps=1 + args.outer_steps, reset_num_timesteps=False)
            wall = time.perf_counter() - t0
            after = cpu_seconds(pids)
            tree = tree_cpu_seconds() - tree0
            dumper.join()
            for proc in procs:
                proc.send_signal(2)  # SIGINT: py-spy writes its flame graph and exits
            for proc in procs:
                proc.wait(timeout=60)
            records = meta.step_records[1:]
    summary = {
        "wall_seconds": wall,
        "step_seconds": [r["step_seconds"] for r in records],
        "wait_seconds": [r["wait_seconds"] for r in records],
        "meta_update_seconds": [r["meta_update_seconds"] for r in records],
        "cpu_seconds": {k: after[k] - before[k] for k in pids},
        "cpu_busy_fraction": {k: (after[k] - before[k]) / wall for k in pids},
        "process_tree_cpu_seconds": tree,
        "sample_seconds": [r["sample_seconds"] for r in records],
        "task_timings": [r["task_timings"] for r in records],
        "load_average": list(os.getloadavg()),
        "pids": pids,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"flame graphs and dumps in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
