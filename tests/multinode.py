"""A real two-node Ray cluster on one machine, inside a network namespace that has only ``lo``.

:class:`NamespaceCluster` creates the namespace (``unshare -n``, held open by one ``sleep``
process), starts a Ray head and a second node in it with ``ray start --block`` (run through
``nsenter``), submits jobs with ``ray job submit``, can kill the second node, and tears everything
down by the processes it started: the process tree of each ``ray start --block`` (a node's
raylet, GCS, dashboard, agents and workers are its descendants), then anything else still in the
namespace (found by the namespace's inode in ``/proc/<pid>/ns/net``). The namespace goes away
with its last process.

Nothing in the namespace can reach the host's interfaces and nothing outside can reach it, so
Ray's ports, dashboard and Jobs API are visible only to processes started in it. Token
authentication is on anyway, with a fresh token per cluster given as ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN`` to every process started in the namespace: the same setup as a real cluster,
and independent of the host user's ``~/.ray/auth_token``.

The head and the second node can also be started one after the other
(:meth:`NamespaceCluster.start_head`, :meth:`NamespaceCluster.start_second_node`), with
:meth:`NamespaceCluster.hold_head_cpus` taking head CPUs meanwhile: that is how the node-loss
test keeps the run's task-source actor, which Ray places on a random node, on the head.

Used by ``tests/test_multinode.py`` and ``scripts/multinode_demo.py``; needs root and ``unshare``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# the interpreter's bin folder (VENV_BIN: ``ray`` and ``distributed-reptile`` come from it) and the
# namespace helpers are those of the cluster benchmark
from distributed_reptile.bench.netns import (
    VENV_BIN,
    kill_tree,
    namespace_support,
    net_ns_inode,
    pids_in_net_ns,
)

__all__ = [
    "DASHBOARD",
    "FAST_HEALTH_CHECK",
    "NamespaceCluster",
    "VENV_BIN",
    "kill_tree",
    "namespace_support",
    "net_ns_inode",
    "parse_state_list",
    "pids_in_net_ns",
]

DASHBOARD = "http://127.0.0.1:8265"
#: Node failure is detected in about 3 s instead of about a minute (set on the head).
FAST_HEALTH_CHECK = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def parse_state_list(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The rows printed by ``ray list ... --format json`` (none: Ray prints a sentence instead)."""
    if out.returncode != 0:
        raise ValueError(out.stderr)
    if "No resource in the cluster" in out.stdout + out.stderr:
        return []
    return list(json.loads(out.stdout))


class NamespaceCluster:
    """A Ray head and a second node, both on 127.0.0.1 in a private network namespace.

    :param workdir: folder for logs (short path: Ray's socket paths must stay under 107 bytes).
    :param head_cpus: logical CPUs of the head node.
    :param worker_cpus: logical CPUs of the second node.
    :param port: the head's GCS port.
    :param head_env: extra environment of the head (e.g. :data:`FAST_HEALTH_CHECK`).
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        head_cpus: int = 1,
        worker_cpus: int = 1,
        port: int = 6390,
        head_env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.temp_dir = self.workdir / "ray"
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.port = port
        self.head_env = dict(head_env or {})
        self.token = secrets.token_hex(32)
        self.holder: subprocess.Popen[str] | None = None
        self.head: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.inode: int | None = None
        self._logs: list[Any] = []

    # ------------------------------------------------------------------ environment
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment of every process started in the namespace."""
        env = dict(os.environ)
        # a cluster, not a single-machine instance: the nodes must accept each other
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        env.pop("RAY_ADDRESS", None)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.token
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def _nsenter(self, cmd: Sequence[str]) -> list[str]:
        assert self.holder is not None, "start() the namespace first"
        return ["nsenter", "-t", str(self.holder.pid), "-n", "--", *cmd]

    def popen(
        self, cmd: Sequence[str], log_name: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in the namespace, its output going to ``<workdir>/<log_name>.log``."""
        log = open(self.workdir / f"{log_name}.log", "ab")
        self._logs.append(log)
        return subprocess.Popen(
            self._nsenter(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(extra_env),
            cwd=self.workdir,
        )

    def run(
        self, cmd: Sequence[str], timeout: float = 120, cwd: str | os.PathLike[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the namespace and wait for it."""
        return subprocess.run(
            self._nsenter(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=cwd or self.workdir,
        )

    def ray(self, *args: str) -> list[str]:
        """``ray ARGS`` with the interpreter's own ``ray`` executable."""
        return [str(VENV_BIN / "ray"), *args]

    # ------------------------------------------------------------------ lifetime
    def start(self, timeout: float = 120) -> NamespaceCluster:
        """Create the namespace, start the head, then the second node; wait until both are up."""
        self.start_head(timeout)
        self.start_second_node(timeout)
        return self

    def start_head(self, timeout: float = 120) -> None:
        """Create the namespace and start the head; wait until its Jobs API answers."""
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 100000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "up":
            raise RuntimeError("could not bring up lo in the new network namespace")
        self.inode = net_ns_inode(self.holder.pid)
        if self.inode == net_ns_inode(os.getpid()):
            raise RuntimeError("unshare -n did not create a new network namespace")
        self.head = self.popen(
            self.ray(
                "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                "--port", str(self.port), "--num-cpus", str(self.head_cpus),
                "--resources", '{"head_slot": 1}', "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--temp-dir", str(self.temp_dir),
                "--disable-usage-stats",
            ),
            "head",
            self.head_env,
        )  # fmt: skip
        self._wait(
            lambda: (
                self.run(self.ray("job", "list", "--address", DASHBOARD), timeout=60).returncode
                == 0
            ),
            timeout,
            "the head's Jobs API to answer",
            self.head,
        )

    def start_second_node(
        self, timeout: float = 120, temp_dir: str = "ray2", wait: bool = True
    ) -> None:
        """Start the second node and wait until the head counts it alive.

        :param temp_dir: its temp dir, under ``workdir`` (a node that joins again after the
            first one was killed gets a new one).
        :param wait: wait until it has joined (each look is a ``ray list nodes``: seconds).
        """
        self.worker = self.popen(
            self.ray(
                "start", "--block", "--address", f"127.0.0.1:{self.port}",
                "--num-cpus", str(self.worker_cpus), "--resources", '{"second_node": 1}',
                # its own temp dir: with the head's, its runtime-env agent would manage the same
                # runtime_resources folder and remove the job's working dir under the driver
                "--temp-dir", str(self.workdir / temp_dir), "--disable-usage-stats",
            ),
            "worker",
        )  # fmt: skip
        if not wait:
            return
        self._wait(
            lambda: len(self.alive_nodes()) == 2, timeout, "the second node to join", self.worker
        )

    def hold_head_cpus(self, num_cpus: float) -> int:
        """Take ``num_cpus`` of the head's CPUs with an idle detached actor; return its pid.

        Killing that pid (``os.kill``) gives them back: the actor is not restarted.
        """
        code = (
            "import os, ray\n"
            f"ray.init(address='127.0.0.1:{self.port}', logging_level='ERROR')\n"
            "@ray.remote\n"
            "class CpuHolder:\n"
            "    def pid(self):\n"
            "        return os.getpid()\n"
            f"h = CpuHolder.options(num_cpus={num_cpus}, resources={{'head_slot': 0.01}},\n"
            "    name='cpu_holder', lifetime='detached', max_restarts=0).remote()\n"
            "print('PID', ray.get(h.pid.remote()))\n"
        )
        out = self.run([sys.executable, "-c", code], timeout=120)
        pids = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("PID ")]
        if out.returncode != 0 or not pids:
            raise RuntimeError(f"could not start the CPU holder: {out.stderr[-2000:]}")
        return int(pids[0])

    def _wait(
        self, check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{what}: the process exited with {proc.returncode}; see {self.workdir}"
                )
            try:
                if check():
                    return
            except (subprocess.TimeoutExpired, ValueError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"timed out waiting for {what}; logs in {self.workdir}")

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's node table (``ray list nodes``): node_id, state, is_head_node, resources_total..."""
        out = self.run(
            self.ray("list", "nodes", "--address", DASHBOARD, "--format", "json", "--detail"),
            timeout=60,
        )
        return parse_state_list(out)

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes() if n["state"] == "ALIVE"]

    def node_ids(self) -> dict[str, str]:
        """``{"head": id, "second": id}`` from the custom resource each node was started with."""
        ids = {}
        for node in self.nodes():
            resources = node.get("resources_total", {})
            if "head_slot" in resources:
                ids["head"] = node["node_id"]
            elif "second_node" in resources:
                ids["second"] = node["node_id"]
        return ids

    def submit(
        self,
        entrypoint: Sequence[str],
        working_dir: str | os.PathLike[str],
        submission_id: str,
        runtime_env: Mapping[str, Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """``ray job submit`` (it follows the job's logs and exits 1 if the job fails)."""
        cmd = self.ray(
            "job",
            "submit",
            "--address",
            DASHBOARD,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(working_dir),
        )
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(dict(runtime_env))]
        return self.popen([*cmd, "--", *entrypoint], f"job_{submission_id}")

    def job_status(self, submission_id: str) -> str:
        """The job's status (``SUCCEEDED``, ``FAILED``, ``RUNNING``...) from ``ray list jobs``."""
        return str(self.job(submission_id).get("status", "UNKNOWN"))

    def job(self, submission_id: str) -> dict[str, Any]:
        """The job's entry in ``ray list jobs`` (status, driver_node_id...); empty if unknown."""
        out = self.run(
            self.ray("list", "jobs", "--address", DASHBOARD, "--format", "json"), timeout=60
        )
        try:
            rows = parse_state_list(out)
        except ValueError:
            return {}
        jobs = [j for j in rows if j.get("submission_id") == submission_id]
        return dict(jobs[0]) if jobs else {}

    def alive_actors(self, class_name: str) -> list[dict[str, Any]]:
        """The alive actors of ``class_name`` (``ray list actors``: node_id, name, job_id...)."""
        out = self.run(
            self.ray(
                "list", "actors", "--address", DASHBOARD, "--format", "json",
                "--filter", f"class_name={class_name}", "--filter", "state=ALIVE",
            ),
            timeout=60,
        )  # fmt: skip
        return parse_state_list(out)

    def wait_for_actor(
        self, class_name: str, submit: subprocess.Popen[bytes], timeout: float = 180
    ) -> str:
        """Wait until an actor of ``class_name`` is alive; return its node id.

        :param submit: the job's ``ray job submit`` process (its end stops the wait).
        """
        deadline = time.monotonic() + timeout
        while True:
            actors = self.alive_actors(class_name)
            if actors:
                return str(actors[0]["node_id"])
            if submit.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {class_name} actor came up; see {self.workdir}")
            time.sleep(0.5)

    def job_log(self, submission_id: str) -> str:
        path = self.workdir / f"job_{submission_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(
        self,
        submission_id: str,
        text: str,
        count: int,
        submit: subprocess.Popen[bytes],
        timeout: float = 300,
    ) -> float:
        """Wait until the job's log holds ``text`` ``count`` times; return when
        (``time.monotonic()``).

        :param submit: the job's ``ray job submit`` process (its end stops the wait).
        """
        deadline = time.monotonic() + timeout
        while self.job_log(submission_id).count(text) < count:
            if submit.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not {count} times in the log of job {submission_id}:\n"
                    f"{self.job_log(submission_id)[-4000:]}"
                )
            time.sleep(0.2)
        return time.monotonic()

    def kill_second_node(self) -> list[int]:
        """Kill the second node's processes (raylet, agents, workers) at once, as a crash would."""
        assert self.worker is not None
        return kill_tree(self.worker.pid)

    def namespace_pids(self) -> list[int]:
        """The processes still in the namespace."""
        return pids_in_net_ns({self.inode}) if self.inode is not None else []

    def teardown(self) -> list[int]:
        """Kill every process this cluster started; return those still alive afterwards (none)."""
        for proc in (self.worker, self.head):
            if proc is not None:
                kill_tree(proc.pid)
        # anything left in the namespace was started in it by us (job drivers, reparented helpers)
        for _ in range(3):
            left = [p for p in self.namespace_pids() if self.holder is None or p != self.holder.pid]
            if not left:
                break
            for pid in left:
                kill_tree(pid)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait(timeout=30)
        for proc in (self.worker, self.head):
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        for log in self._logs:
            log.close()
        return self.namespace_pids()

    def __enter__(self) -> NamespaceCluster:
        try:
            return self.start()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.teardown()
