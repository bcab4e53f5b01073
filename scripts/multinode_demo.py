"""A real two-node Ray cluster on this machine, a training job submitted to it, optionally a node lost.

Inside a private network namespace that has only ``lo`` (``unshare -n``; needs root), it starts a
Ray head and a second node on 127.0.0.1 with token authentication, submits
``distributed-reptile train CONFIG`` with ``ray job submit``, prints the run's summary (tasks per
node included), and tears the cluster down by the processes it started.

    sudo .venv/bin/python scripts/multinode_demo.py
    sudo .venv/bin/python scripts/multinode_demo.py --kill-second-node-after 1 --set outer_steps=6

With ``--kill-second-node-after N`` the second node is killed once N outer steps are done; the
run finishes on the head (its worker actor is restarted there and the lost tasks are retried).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from multinode import FAST_HEALTH_CHECK, NamespaceCluster, namespace_support  # noqa: E402


def _done_steps(out: Path) -> int:
    steps = [int(p.name.rsplit("_", 1)[1]) for p in (out / "checkpoints").glob("meta_ckpt_outer_*")]
    return max(steps, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default="configs/smoke.yaml", help="run config, relative to the repository"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--output", default=None, help="run folder (default: a new temporary folder)"
    )
    parser.add_argument(
        "--kill-second-node-after",
        type=int,
        default=None,
        metavar="N",
        help="kill the second node once N outer steps are done",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
    args = parser.parse_args(argv)

    reason = namespace_support()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="drmn_", dir="/tmp"))
    out = Path(args.output).resolve() if args.output else work / "run"
    job_dir = work / "job"
    shutil.copytree(REPO / "configs", job_dir / "configs")
    config = Path(args.config)
    if not (REPO / config).is_file() or config.parts[0] != "configs":
        print(f"--config must be a file under configs/, got {args.config}", file=sys.stderr)
        return 2

    losing = args.kill_second_node_after is not None
    cluster = NamespaceCluster(
        work,
        head_cpus=2 if losing else 1,
        worker_cpus=1,
        head_env=FAST_HEALTH_CHECK if losing else None,
    )
    t0 = time.monotonic()
    rc = 1
    ids: dict[str, str] = {}
    try:
        sets = [a for item in args.overrides for a in ("--set", item)]
        entry = ["distributed-reptile", "train", str(config), "--output", str(out), *sets]
        job_id = "multinode_demo"
        if not losing:
            cluster.start()
            submit = cluster.submit(entry, job_dir, job_id)
        else:
            # Ray puts the run's task source (an actor that asks for no resources) on a random
            # node, and it does not survive its node: the second node joins once it is up on
            # the head. Meanwhile an idle actor holds one of the head's two CPUs, so that the
            # second worker waits for the second node; it is released before the node goes.
            cluster.start_head()
            holder = cluster.hold_head_cpus(1)
            submit = cluster.submit(entry, job_dir, job_id)
            cluster.wait_for_actor("TaskSource", submit)
            cluster.start_second_node()
        ids = cluster.node_ids()
        print(
            f"cluster up after {time.monotonic() - t0:.1f}s: "
            f"head {ids['head'][:12]}, second {ids['second'][:12]}"
        )
        if losing:
            while submit.poll() is None and _done_steps(out) < args.kill_second_node_after:
                time.sleep(0.2)
            if submit.poll() is None:
                os.kill(holder, signal.SIGKILL)
                cluster.kill_second_node()
                print(f"killed the second node after {_done_steps(out)} outer step(s)")
        submit.wait(timeout=args.timeout)
        status = cluster.job_status(job_id)
        print(f"job status: {status} (ray job submit exited {submit.returncode})")
        rc = 0 if status == "SUCCEEDED" else 1
        if rc != 0:
            print(cluster.job_log(job_id)[-4000:])
    finally:
        left = cluster.teardown()
        print(f"cluster torn down; processes left: {left}")
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        names = {v: k for k, v in ids.items()}
        per_node = {names.get(k, k[:12]): v for k, v in summary["tasks_per_node"].items()}
        print(json.dumps({**summary, "tasks_per_node": per_node}, indent=2))
    print(f"run folder: {out}; cluster logs: {work}")
    return rc if not left else 1


if __name__ == "__main__":
    sys.exit(main())
