"""A Ray cluster of several nodes on one machine, each node in a private network namespace.

:class:`ClusterNet` makes the namespaces (``unshare -n``, each held open by one ``sleep`` process):
the head's, and one per worker node joined to it by a veth pair whose head end is a port of a
bridge in the head's namespace (private ``10.77.0.0/24`` addresses, the head on ``.1``). Nothing in
them can reach the host's interfaces and nothing outside can reach them. Every byte a node sends
to or receives from another crosses its veth, so the veth counters read in the head's namespace
give per-node bytes in and out, and the bridge's own counters the bytes into and out of the head
node. Where veth or bridge setup fails, every node shares the head's namespace, which has only
``lo`` (no per-node bytes then).

:class:`RayNodes` starts a ``ray start --block`` per node in its namespace (through ``nsenter``,
token authentication on with a fresh token), runs commands there, and tears everything down by the
processes it started: the process tree of each ``ray start --block`` and of each command, then
anything else still in the namespaces (found by the namespace's inode in ``/proc/<pid>/ns/net``),
then the holders; a namespace goes away with its last process. It never calls ``ray stop``.
A worker node can also be killed on its own (:meth:`RayNodes.kill_node`, as a crash would) and a
fresh one started in its place (:meth:`RayNodes.start_node`).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

#: The first three octets of the nodes' addresses; the head is ``.1``, node ``k`` is ``.(k+1)``.
SUBNET = "10.77.0"
#: The bridge in the head's namespace and the prefix of the veth ends beside it.
BRIDGE = "drbr0"
VETH_PREFIX = "drv"
GCS_PORT = 6379
#: Environment of the interpreter's ``bin`` folder (a virtualenv's): ``ray`` comes from it.
VENV_BIN = Path(sys.executable).parent
#: Printed by ``ray start`` once its node is up.
STARTED = b"Ray runtime started"


def namespace_support() -> str | None:
    """``None`` when network namespaces can be made here, else the reason they cannot."""
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (util-linux / iproute2)"
    if not (VENV_BIN / "ray").exists():
        return f"no `ray` executable next to {sys.executable}"
    try:
        probe = subprocess.run(
            ["unshare", "-n", "sh", "-c", "ip link set lo up"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare -n` failed: {exc}"
    if probe.returncode != 0:
        return f"`unshare -n` failed (needs root or CAP_SYS_ADMIN): {probe.stderr.strip()}"
    return None


def net_ns_inode(pid: int) -> int | None:
    """The inode of ``pid``'s network namespace (``None`` if the process is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_net_ns(inodes: set[int]) -> list[int]:
    """Every process whose network namespace is one of ``inodes``."""
    return [p for p in psutil.pids() if net_ns_inode(p) in inodes]


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to ``pid`` and all its descendants (collected first); return the pids."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Killed when the benchmark process dies, whatever kills it (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Namespace:
    """A new network namespace with ``lo`` up, held open by one ``sleep`` process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "ip link set lo up && echo up && exec sleep 1000000"],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "up":
            self.close()
            raise RuntimeError("could not bring up lo in a new network namespace")
        self.pid = self.holder.pid
        inode = net_ns_inode(self.pid)
        if inode is None or inode == net_ns_inode(os.getpid()):
            self.close()
            raise RuntimeError("unshare -n did not create a new network namespace")
        self.inode = inode

    def cmd(self, argv: Sequence[str], own_sysfs: bool = False) -> list[str]:
        """``argv`` run in this namespace; ``own_sysfs``: in a private mount namespace too, with
        ``/sys`` mounted afresh so that ``/sys/class/net`` lists this namespace's interfaces."""
        inner = list(argv)
        if own_sysfs:
            script = 'mount -t sysfs sysfs /sys 2>/dev/null; exec "$@"'
            inner = ["unshare", "-m", "--", "sh", "-c", script, "sh", *inner]
        return ["nsenter", "-t", str(self.pid), "-n", "--", *inner]

    def ip(self, *args: str) -> None:
        """``ip ARGS`` in this namespace; a failure raises ``RuntimeError`` with ip's message."""
        out = subprocess.run(self.cmd(["ip", *args]), capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait(timeout=30)
        if self.holder.stdout is not None:
            self.holder.stdout.close()


class ClusterNet:
    """The namespaces of a head and ``nodes`` worker nodes (see the module's docstring).

    :param nodes: worker nodes.
    :param veth: join them by veth pairs to a bridge (``False``: one loopback-only namespace).
    """

    def __init__(self, nodes: int, veth: bool = True) -> None:
        self.nodes = nodes
        self.head = Namespace()
        self.node_ns: list[Namespace] = []
        #: Why the veth setup was not used (``None`` when it was).
        self.fallback_reason: str | None = None if veth else "veth setup turned off"
        self.per_node_bytes = False
        if veth:
            try:
                self._join_by_veth()
                self.per_node_bytes = True
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.fallback_reason = f"veth/bridge setup failed: {exc}"
                for ns in self.node_ns:
                    ns.close()
                self.node_ns = []

    def _join_by_veth(self) -> None:
        self.head.ip("link", "add", BRIDGE, "type", "bridge")
        self.head.ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        self.head.ip("link", "set", BRIDGE, "up")
        for k in range(1, self.nodes + 1):
            ns = Namespace()
            self.node_ns.append(ns)
            veth = f"{VETH_PREFIX}{k}"
            self.head.ip(
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(ns.pid)
            )
            self.head.ip("link", "set", veth, "master", BRIDGE)
            self.head.ip("link", "set", veth, "up")
            ns.ip("addr", "add", f"{SUBNET}.{k + 1}/24", "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")

    @property
    def head_ip(self) -> str:
        return f"{SUBNET}.1" if self.per_node_bytes else "127.0.0.1"

    def node_ip(self, k: int) -> str:
        """Address of worker node ``k`` (1-based)."""
        return f"{SUBNET}.{k + 1}" if self.per_node_bytes else "127.0.0.1"

    def namespace_of(self, k: int) -> Namespace:
        """The namespace of worker node ``k`` (1-based; the head's in the loopback fallback)."""
        return self.node_ns[k - 1] if self.per_node_bytes else self.head

    def interfaces(self) -> dict[str, str]:
        """Counters to read in the head's namespace: ``head`` (the bridge: bytes delivered to and
        sent by the head node) and ``node<k>`` (node ``k``'s veth end) -> interface name."""
        if not self.per_node_bytes:
            return {}
        return {
            "head": BRIDGE,
            **{f"node{k}": f"{VETH_PREFIX}{k}" for k in range(1, self.nodes + 1)},
        }

    def describe(self) -> dict[str, Any]:
        return {
            "topology": "veth pairs into a bridge in the head's namespace"
            if self.per_node_bytes
            else "every node in one network namespace with only lo",
            "per_node_bytes": self.per_node_bytes,
            "fallback_reason": self.fallback_reason,
            "head_ip": self.head_ip,
            "node_ips": [self.node_ip(k) for k in range(1, self.nodes + 1)],
            "interfaces": self.interfaces(),
            "mtu": self._mtu() if self.per_node_bytes else None,
        }

    def _mtu(self) -> int | None:
        """The MTU of the veth ends (what the frame counts depend on), read with ``ip -j``."""
        out = subprocess.run(
            self.head.cmd(["ip", "-j", "link", "show", f"{VETH_PREFIX}1"]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        try:
            return int(json.loads(out.stdout)[0]["mtu"])
        except (ValueError, LookupError, TypeError):
            return None

    def inodes(self) -> set[int]:
        return {self.head.inode, *(ns.inode for ns in self.node_ns)}

    def close(self) -> None:
        for ns in [*self.node_ns, self.head]:
            ns.close()


class RayNodes:
    """A Ray head and worker nodes in the namespaces of ``net``; see the module's docstring.

    :param net: the namespaces.
    :param workdir: folder of logs and Ray's temp dirs (short: socket paths stay under 107 bytes).
    :param node_resources: custom resources of each worker node (none on the head).
    :param head_object_store: object store bytes of the head; ``node_object_store``: of each node.
    :param node_cpus: logical CPUs of each worker node; ``head_cpus``: of the head.
    :param extra_env: more environment of every process started in the namespaces (e.g. Ray's
        ``RAY_health_check_*`` settings, read by the head's GCS).
    """

    def __init__(
        self,
        net: ClusterNet,
        workdir: str | os.PathLike[str],
        node_resources: Mapping[str, float],
        head_object_store: int,
        node_object_store: int,
        node_cpus: int = 1,
        head_cpus: int = 1,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.net = net
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_resources = dict(node_resources)
        self.head_object_store = head_object_store
        self.node_object_store = node_object_store
        self.node_cpus = node_cpus
        self.head_cpus = head_cpus
        self.extra_env = dict(extra_env or {})
        self.token = secrets.token_hex(32)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    @property
    def address(self) -> str:
        return f"{self.net.head_ip}:{GCS_PORT}"

    def env(self) -> dict[str, str]:
        """Environment of every process started in the namespaces (token auth, no usage stats)."""
        env = dict(os.environ)
        # a cluster, not a single-machine instance: the nodes must accept each other
        for key in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"):
            env.pop(key, None)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def popen(
        self,
        name: str,
        ns: Namespace,
        argv: Sequence[str],
        own_sysfs: bool = False,
        to_log: bool = True,
        log_file: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``ns`` in its own session (torn down by :meth:`teardown`), output
        to ``<workdir>/<name>.log``, or to ``log_file`` (appended to) when given
        (``to_log=False``: to this process's output)."""
        log = open(log_file or self.log_path(name), "ab") if to_log else None
        if log is not None:
            self._logs.append(log)
        proc = subprocess.Popen(
            ns.cmd(argv, own_sysfs=own_sysfs),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.procs[name] = proc
        return proc

    def _ray_start(self, name: str, ns: Namespace, ip: str, *args: str) -> None:
        argv = [
            str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address", ip,
            "--temp-dir", str(self.workdir / name), "--disable-usage-stats", *args,
        ]  # fmt: skip
        self.popen(name, ns, argv)

    def start(self, timeout: float = 180) -> None:
        """Start the head, wait until it is up, then every worker node at once; wait for them."""
        self._ray_start(
            "head", self.net.head, self.net.head_ip, "--head", "--port", str(GCS_PORT),
            "--num-cpus", str(self.head_cpus), "--include-dashboard", "false",
            "--object-store-memory", str(self.head_object_store),
        )  # fmt: skip
        self._wait_started(["head"], timeout)
        names = []
        for k in range(1, self.net.nodes + 1):
            name = f"node{k}"
            names.append(name)
            self._start_node(k, name)
        self._wait_started(names, timeout)

    def _start_node(self, k: int, name: str) -> None:
        self._ray_start(
            name, self.net.namespace_of(k), self.net.node_ip(k), "--address", self.address,
            "--num-cpus", str(self.node_cpus), "--resources", json.dumps(self.node_resources),
            "--object-store-memory", str(self.node_object_store),
        )  # fmt: skip

    def start_node(self, k: int, name: str, timeout: float = 180) -> None:
        """Start worker node ``k`` (1-based) again as ``name`` (a name not used before: its log
        and temp dir are new), joining the running head; wait until it is up."""
        if name in self.procs:
            raise ValueError(f"{name!r} was started already: give the new node another name")
        self._start_node(k, name)
        self._wait_started([name], timeout)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL node ``name``'s processes at once (its ``ray start --block`` and everything
        under it: raylet, agents, workers), as a crash would; return the pids signalled."""
        proc = self.procs[name]
        pids = kill_tree(proc.pid)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        return pids

    def _wait_started(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            for name in list(pending):
                if STARTED in self.log_path(name).read_bytes():
                    pending.remove(name)
                elif self.procs[name].poll() is not None:
                    raise RuntimeError(
                        f"ray start of {name} exited with {self.procs[name].returncode}: "
                        f"{self.tail(name)}"
                    )
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{pending} did not start in {timeout:.0f} s; logs in {self.workdir}"
                )
            time.sleep(0.2)

    def tail(self, name: str, chars: int = 2000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def teardown(self) -> list[int]:
        """Kill every process started here, then anything left in the namespaces, then the
        namespaces' holders; return the pids still in the namespaces afterwards (none)."""
        for proc in reversed(list(self.procs.values())):
            kill_tree(proc.pid)
        inodes = self.net.inodes()
        holders = {self.net.head.pid, *(ns.pid for ns in self.net.node_ns)}
        for _ in range(3):
            left = [p for p in pids_in_net_ns(inodes) if p not in holders]
            if not left:
                break
            for pid in left:
                kill_tree(pid)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for log in self._logs:
            log.close()
        self.net.close()
        return pids_in_net_ns(inodes)


def read_counters(interfaces: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """``label -> {"rx": bytes, "tx": bytes}`` of each interface, from
    ``/sys/class/net/<if>/statistics`` (the namespace's own sysfs, see :meth:`Namespace.cmd`),
    else from ``/proc/self/net/dev`` (the same counters, always this process's namespace)."""
    out: dict[str, dict[str, int]] = {}
    dev: dict[str, list[str]] | None = None
    for label, name in interfaces.items():
        stats = Path("/sys/class/net") / name / "statistics"
        try:
            out[label] = {
                "rx": int((stats / "rx_bytes").read_text()),
                "tx": int((stats / "tx_bytes").read_text()),
            }
            continue
        except OSError:
            pass
        if dev is None:
            lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
            dev = {ln.split(":")[0].strip(): ln.split(":")[1].split() for ln in lines}
        fields = dev[name]
        out[label] = {"rx": int(fields[0]), "tx": int(fields[8])}
    return out


def counter_source(interfaces: Mapping[str, str]) -> str:
    """Where :func:`read_counters` reads from in this process."""
    if interfaces and all(Path("/sys/class/net", n).exists() for n in interfaces.values()):
        return "/sys/class/net/<if>/statistics/{rx,tx}_bytes in the head's namespace"
    return "/proc/self/net/dev in the head's namespace"


__all__ = [
    "ClusterNet",
    "Namespace",
    "RayNodes",
    "counter_source",
    "kill_tree",
    "namespace_support",
    "net_ns_inode",
    "pids_in_net_ns",
    "read_counters",
]
