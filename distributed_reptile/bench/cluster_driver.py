"""The cluster benchmark's driver part: run inside the head node's network namespace (see
:mod:`distributed_reptile.bench.cluster`), it joins the cluster, runs every ``(mode, P, B)`` group
of outer steps with the real trainer and writes the raw figures to a JSON file."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import psutil

from distributed_reptile import ReptileMetaRL
from distributed_reptile.bench.common import RssSampler
from distributed_reptile.bench.learners import SleepLearner
from distributed_reptile.bench.netns import counter_source, read_counters
from distributed_reptile.bench.workload import Workload, width_for_parameters
from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.inner.learner import AdaptedResult, TaskJob
from distributed_reptile.weights import NumpyWeights

#: ``flat``: every task's weights to the driver; ``reduced``: one partial sum per actor call to
#: the driver (``node_reduction=False``); ``node``: the sums combined on the nodes, one to the
#: driver per outer step (``node_reduction=True``).
MODES = ("flat", "reduced", "node")


class FlatReptile(ReptileMetaRL):
    """Reptile with every task's adapted weights sent to the driver (``combine = "all"``): the
    driver computes the same exact sum itself, so the meta weights are the same bit for bit."""

    combine: ClassVar[Literal["all", "sum"]] = "all"


class ShiftLearner(SleepLearner):
    """Sleeps ``sleep_seconds``, then returns the meta weights plus a constant that depends only
    on the task's seed: nonzero deltas, the same in every mode and run.

    With ``slow_factor`` > 1 in the inner loop's parameters, the first worker to run a task (the
    one that creates the file ``slow_flag``) sleeps that many times longer on every task: a slow
    worker, to see what the dispatch does with it."""

    _slow: float | None = None

    def pause(self) -> float:
        if self._slow is None:
            factor = float(self.inner_loop_params.get("slow_factor", 1.0))
            self._slow = 1.0
            if factor > 1.0:
                try:
                    os.close(os.open(self.inner_loop_params["slow_flag"], os.O_CREAT | os.O_EXCL))
                    self._slow = factor
                except FileExistsError:
                    pass
        return super().pause() * self._slow

    def run(self, job: TaskJob, meta_weights: NumpyWeights) -> AdaptedResult:
        result = super().run(job, meta_weights)
        shift = ((job.task_seed % 2001) - 1000) * 2.0**-20
        result.weights = {
            n: np.add(a, np.asarray(shift, dtype=a.dtype)) if a.dtype.kind == "f" else a
            for n, a in result.weights.items()
        }
        return result


class TimedSampler(RssSampler):
    """An :class:`RssSampler` that counts its own thread's CPU seconds (:attr:`cpu_seconds`), so
    that they can be left out of the driver's."""

    cpu_seconds = 0.0

    def _loop(self) -> None:
        t0 = time.thread_time()
        while not self._stop.wait(self.interval):
            self._fold(self._read())
            self.cpu_seconds = time.thread_time() - t0


def _cpu_of(proc: psutil.Process | None) -> float | None:
    """User + system CPU seconds of a process (``None``: not known, or gone)."""
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def source_pid(meta: Any) -> int | None:
    """The pid of the trainer's task-source actor (it runs on the head, beside the driver), or
    ``None`` when the source is not an actor."""
    import ray

    actor = getattr(getattr(meta, "task_source", None), "actor", None)
    if actor is None:
        return None
    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid())))


class StepProbe(MetaCallback):
    """Per outer step: driver CPU and wall seconds, interface counters, peak driver memory, the
    task source's CPU seconds (``source_pid``) and the driver's wait for the step's tasks."""

    def __init__(
        self, interfaces: dict[str, str], sampler: TimedSampler, source_pid: int | None = None
    ) -> None:
        super().__init__()
        self.interfaces = interfaces
        self.sampler = sampler
        self.source: psutil.Process | None = None
        if source_pid is not None:
            try:
                self.source = psutil.Process(source_pid)
            except psutil.Error:
                pass  # gone: no figure
        self.steps: list[dict[str, Any]] = []
        self._start: tuple[dict[str, dict[str, int]], float, float, float, float | None] = (
            {}, 0, 0, 0, None
        )  # fmt: skip

    def _on_outer_step_start(self, outer_step: int) -> None:
        self.sampler.mark()
        counters = read_counters(self.interfaces)
        self._start = (
            counters, time.perf_counter(), self.sampler.cpu_seconds, time.process_time(),
            _cpu_of(self.source),
        )  # fmt: skip

    def _on_outer_step_end(self, record: Any) -> bool:
        cpu = time.process_time()
        sampling = self.sampler.cpu_seconds
        wall = time.perf_counter()
        source = _cpu_of(self.source)
        counters = read_counters(self.interfaces)
        before, wall0, sampling0, cpu0, source0 = self._start
        drawing = None if source is None or source0 is None else source - source0
        peak = self.sampler.peaks()["driver"]
        delta = {k: {d: counters[k][d] - before[k][d] for d in ("rx", "tx")} for k in counters}
        self.steps.append(
            {
                # the memory sampler's own thread left out
                "driver_cpu_seconds": cpu - cpu0 - (sampling - sampling0),
                # the benchmark's memory-sampling thread (every 5 ms): grows with the wall time
                "sampler_cpu_seconds": sampling - sampling0,
                # the task-source actor's process over the step (it draws the next steps' tasks
                # while this one's inner loops run)
                "source_cpu_seconds": drawing,
                # the driver's wait for the step's tasks (drawn ahead except on a run's first step)
                "sample_seconds": record["sample_seconds"],
                "wall_seconds": wall - wall0,
                "step_seconds": record["step_seconds"],
                "wait_seconds": record["wait_seconds"],
                "meta_update_seconds": record["meta_update_seconds"],
                "peak_rss_bytes": peak["rss"],
                "peak_private_bytes": peak["private"],
                # head: the bridge (rx = delivered to the head node); node k: its veth's head end
                # (rx = what node k sent, tx = what it received)
                "driver_node_in_bytes": delta["head"]["rx"] if "head" in delta else None,
                "driver_node_out_bytes": delta["head"]["tx"] if "head" in delta else None,
                "nodes": {
                    k: {"in_bytes": v["tx"], "out_bytes": v["rx"]}
                    for k, v in delta.items()
                    if k != "head"
                },
                "task_pids": list(record["task_pids"]),
            }
        )
        return True


def _digest(meta: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in meta.meta_policy.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _stats_bytes() -> int:
    """Pickled size of one task's result without weights (what ``combine = "sum"`` sends per task)."""
    from stable_baselines3 import PPO

    from distributed_reptile.tasks.families import make_cartpole_task
    from distributed_reptile.tasks.spec import TaskSpec

    env, info = make_cartpole_task(random_seed=123456)
    env.close()
    spec = TaskSpec(1023, info, 1023, 123456, make_cartpole_task)
    learner = ShiftLearner(PPO, {}, 0, {"sleep_seconds": 0.0})
    result = learner.run(TaskJob(spec, task_seed=2**31 - 1, index=1023), {})
    result.timings.update(fold=1e-3, weight_fetch=1e-3, round_trip=1e-3)
    return len(pickle.dumps(result))


def _nodes(spec: dict[str, Any], timeout: float = 120.0) -> dict[str, str]:
    """Wait for every node; ``node_id -> label`` (``head``, ``node<k>``)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= spec["nodes"] + 1:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(alive)} of {spec['nodes'] + 1} nodes joined in {timeout} s")
        time.sleep(0.5)
    labels, by_ip = {}, {ip: label for label, ip in spec["node_ips"].items()}
    distinct = len(by_ip) == len(spec["node_ips"])  # not in one loopback namespace
    for n in alive:
        if "bench_worker" not in n["Resources"]:
            labels[n["NodeID"]] = "head"
        elif distinct:
            labels[n["NodeID"]] = by_ip[n["NodeManagerAddress"]]
        else:
            labels[n["NodeID"]] = f"node-{n['NodeID'][:6]}"
    return labels


def driver_main(spec_path: str) -> int:
    """The benchmark's driver part, run in the head's namespace: every group, raw figures to
    the spec's ``raw_path`` (rewritten after each group)."""
    import ray

    from distributed_reptile.ray_utils import ensure_ray

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    ensure_ray(
        ray_address=spec["address"],
        ray_init_kwargs={
            "_node_ip_address": spec["head_ip"],
            "log_to_driver": False,
            "logging_level": "ERROR",
        },
    )
    raw: dict[str, Any] = {"groups": [], "trainers": []}
    try:
        labels = _nodes(spec)
        ifs = spec["interfaces"]
        before = read_counters(ifs)
        time.sleep(2.0)
        after = read_counters(ifs)
        raw.update(
            node_labels=labels,
            counter_source=counter_source(ifs) if ifs else None,
            idle_bytes_per_second={
                k: {d: (after[k][d] - before[k][d]) / 2.0 for d in ("rx", "tx")} for k in ifs
            },
            stats_bytes_per_task=_stats_bytes(),
        )
        sampler = TimedSampler({"driver": os.getpid()}, interval=0.005)
        with sampler:
            for size in spec["sizes"]:
                _run_size(spec, size, labels, sampler, raw)
    finally:
        ray.shutdown()
    return 0


def _run_size(
    spec: dict[str, Any],
    size: int,
    labels: dict[str, str],
    sampler: TimedSampler,
    raw: dict[str, Any],
) -> None:
    width = width_for_parameters(size)
    workload = Workload(net_arch={"pi": [width, width], "vf": [width, width]}, seed=spec["seed"])
    initial = None
    for mode in MODES:
        batches = [
            g["batch"] for g in spec["groups"] if g["mode"] == mode and g["params_target"] == size
        ]
        if not batches:
            continue
        t0 = time.perf_counter()
        meta = (FlatReptile if mode == "flat" else ReptileMetaRL)(
            **workload.trainer_kwargs(
                "ray",
                num_workers=spec["workers"],
                inner_learner_cls=ShiftLearner,
                task_batch_size=batches[0],
                inner_loop_params={
                    "sleep_seconds": spec["sleep"],
                    "slow_factor": spec["slow_factor"],
                    "slow_flag": f"{spec['raw_path']}.{mode}.{size}.slow",
                },
                worker_resources={"num_cpus": spec["worker_cpus"], "bench_worker": 1},
                tasks_per_call=spec["flat_tasks_per_call"]
                if mode == "flat"
                else spec["tasks_per_call"],
                node_reduction=mode == "node",
                verbose=0,
            )
        )
        try:
            construct = time.perf_counter() - t0
            if initial is None:
                initial = {k: v.clone() for k, v in meta.meta_policy.state_dict().items()}
            params = int(sum(p.numel() for p in meta.meta_policy.parameters()))
            runner: Any = meta.runner
            pid_node = {
                w["pid"]: labels.get(str(w.get("node_id")), "?") for w in runner.worker_info
            }
            placement: dict[str, int] = {}
            for label in pid_node.values():
                placement[label] = placement.get(label, 0) + 1
            raw["trainers"].append(
                {"mode": mode, "params_target": size, "construct_seconds": construct,
                 "workers_per_node": placement}
            )  # fmt: skip
            meta.learn(outer_steps=1, task_seed_mode="meta_step")  # warm-up: the actors' first call
            source = source_pid(meta)  # the trainer's one task source, for all its batches
            for batch in batches:
                meta.task_batch_size = batch
                meta.meta_policy.load_state_dict(initial)
                probe = StepProbe(spec["interfaces"], sampler, source)
                meta.learn(
                    outer_steps=spec["outer_steps"], task_seed_mode="meta_step", callback=probe
                )
                for step in probe.steps:
                    per_node: dict[str, int] = {}
                    for pid in step.pop("task_pids"):
                        label = pid_node.get(pid, "?")
                        per_node[label] = per_node.get(label, 0) + 1
                    step["tasks_per_node"] = per_node
                raw["groups"].append(
                    {"mode": mode, "params_target": size, "parameters": params, "width": width,
                     "batch": batch, "tasks_per_call": runner.chunk_size(batch),
                     "calls": runner.chunk_plan(batch).calls(),
                     "digest": _digest(meta), "steps": probe.steps}
                )  # fmt: skip
                Path(spec["raw_path"]).write_text(json.dumps(raw), encoding="utf-8")
                med = np.median([s["driver_cpu_seconds"] for s in probe.steps])
                print(
                    f"  {mode:7s} P={params:>10,} B={batch:5d}: driver CPU {med:.3f} s/step",
                    flush=True,
                )
        finally:
            meta.close()
    Path(spec["raw_path"]).write_text(json.dumps(raw), encoding="utf-8")
