"""The chaos run's driver side: the learner that takes fault markers, the fault injector (a
callback in the driver), the fault plan, and one driver process (:func:`drive`).

:mod:`distributed_reptile.bench.chaos` orchestrates the runs and compares them; its docstring
describes the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.inner.learner import AdaptedResult, InnerLearner, TaskJob
from distributed_reptile.weights import NumpyWeights

#: The environment variable that tells the learners where the fault markers are.
CHAOS_DIR_ENV = "DISTRIBUTED_REPTILE_CHAOS_DIR"
#: Faults the injector plans (the driver kill is the orchestrator's).
KINDS = ("exit_in_task", "ray_kill", "sigkill", "task_source", "hang")
#: Faults the injector plans with two nodes or more (carried out by the orchestrator).
NODE_KINDS = ("node_loss", "node_join")
#: Seconds a task may run before it is cancelled and rerun (the hang lasts twice as long).
TASK_TIMEOUT_S = 4.0
#: Outer steps from a node's loss to the new node's join, at least.
NODE_GAP = 3
#: How long the injector waits for the orchestrator and the cluster at a node fault.
GATE_TIMEOUT_S = 180.0
#: Set on every process of the cluster (read by the head's GCS): a node's health is checked every
#: second (Ray's default: 3 s), so a lost node is declared dead in seconds, not about 15 s.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000"}
#: Object stores of the head and of each node (the weights are tiny).
HEAD_OBJECT_STORE = 256 * 2**20
NODE_OBJECT_STORE = 128 * 2**20
#: Retry events of the step records that are pool changes, not reruns of a task.
POOL_EVENTS = ("worker_dropped", "worker_added")


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


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _wait_for(check: Callable[[], bool], what: str, timeout: float = GATE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"chaos run: no {what} within {timeout:g} s")
        time.sleep(0.1)


class FaultInjector(MetaCallback):
    """At the planned outer steps, injects the planned fault and logs it (one JSON line each).

    Node faults are asked of the orchestrator (a ``<step>_<kind>.request`` file in ``requests``,
    answered by a ``.done`` file) and the step is held until the cluster shows them (see the
    module's docstring); each hold is logged to ``gates.jsonl`` beside ``log``.
    """

    def __init__(
        self,
        plan: dict[int, str],
        folder: Path,
        log: Path,
        seed: int,
        requests: Path | None = None,
    ) -> None:
        super().__init__()
        self.plan, self.folder, self.log = plan, folder, log
        self.requests = requests
        self.gates = log.with_name("gates.jsonl")
        self.rng = random.Random(seed)
        self._await_workers = False

    def _on_outer_step_start(self, outer_step: int) -> None:
        if self._await_workers:
            self._workers_back(outer_step)
        kind = self.plan.get(outer_step)
        if kind is None:
            return
        import ray

        assert self.trainer is not None
        runner: Any = self.trainer.runner
        live = _live_workers(runner) or list(range(len(runner.actors)))
        worker: int | None = self.rng.choice(live)
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
        elif kind == "node_loss":
            worker = None
            self._lose_node(outer_step)
        elif kind == "node_join":
            worker = None
            self._join_node(outer_step, runner)
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": outer_step + 1, "kind": kind, "worker": worker}) + "\n")

    # ------------------------------------------------------------------ node faults
    def _ask(self, outer_step: int, kind: str) -> None:
        """Ask the orchestrator for ``kind`` and wait until it says it is done."""
        if self.requests is None:
            raise RuntimeError(f"chaos run: {kind} planned but no cluster to ask it of")
        self.requests.mkdir(parents=True, exist_ok=True)
        name = f"{outer_step + 1}_{kind}"
        (self.requests / f"{name}.request").touch()
        done = self.requests / f"{name}.done"
        _wait_for(done.exists, f"answer of the orchestrator to {name}")

    def _lose_node(self, outer_step: int) -> None:
        t0 = time.monotonic()
        before = len(_alive_nodes())
        self._ask(outer_step, "node_loss")
        t_kill = time.monotonic()
        _wait_for(lambda: len(_alive_nodes()) < before, "lost node declared dead")
        self._gate(outer_step, "node_seen_dead", time.monotonic() - t_kill)
        _until_check_due(t0)

    def _join_node(self, outer_step: int, runner: Any) -> None:
        import ray

        t0 = time.monotonic()
        alive = _alive_nodes()
        # the workers dropped with the lost node (their worker_info still names it)
        missing = sum(1 for info in runner.worker_info if info.get("node_id") not in alive)
        before = len(alive)
        self._ask(outer_step, "node_join")
        _wait_for(
            lambda: (
                len(_alive_nodes()) > before
                and ray.available_resources().get("CPU", 0.0) >= missing
            ),
            "new node alive with free CPUs",
        )
        self._gate(outer_step, "node_up", time.monotonic() - t0)
        _until_check_due(t0)
        self._await_workers = True

    def _workers_back(self, outer_step: int) -> None:
        """Hold the step after a join until the workers started on the new node answer."""
        import ray

        self._await_workers = False
        assert self.trainer is not None
        runner: Any = self.trainer.runner
        alive = _alive_nodes()
        asked = [
            actor.ready.remote()
            for actor, info in zip(runner.actors, runner.worker_info, strict=True)
            if info.get("node_id") not in alive
        ]
        t0 = time.monotonic()
        if asked:
            ray.wait(asked, num_returns=len(asked), timeout=GATE_TIMEOUT_S)
        self._gate(outer_step, "workers_back", time.monotonic() - t0)

    def _gate(self, outer_step: int, gate: str, seconds: float) -> None:
        with open(self.gates, "a", encoding="utf-8") as fh:
            line = {"step": outer_step + 1, "gate": gate, "seconds": round(seconds, 2)}
            fh.write(json.dumps(line) + "\n")


def _live_workers(runner: Any) -> list[int]:
    """The workers up on a live node (not those of a lost node, dropped or not back yet)."""
    alive = _alive_nodes()
    return [
        i
        for i, info in enumerate(runner.worker_info)
        if info.get("pid") and info.get("node_id") in alive
    ]


def _until_check_due(t0: float) -> None:
    """Sleep until ``CLUSTER_CHECK_EVERY_S`` has passed since ``t0`` (a step's start): the pool
    looked at the cluster last during the step before, so its next batch looks again at once."""
    from distributed_reptile.runners.ray_actors import CLUSTER_CHECK_EVERY_S

    time.sleep(max(0.0, t0 + CLUSTER_CHECK_EVERY_S + 0.1 - time.monotonic()))


def _sigkill(pid: int | None) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def make_plan(outer_steps: int, seed: int, nodes: int = 1) -> dict[int, str]:
    """Outer step (0-based) -> fault: each kind once, the task source twice, at random steps
    (none in the first two steps, so the workers and the source are up). With ``nodes >= 2``,
    also ``node_loss`` and, ``NODE_GAP`` steps later or more, ``node_join``, four steps or more
    before the end (the step after the join waits for the pool to be back and the next ones run
    with it; room is left for the driver kill after them, see :func:`driver_kill_step`)."""
    kinds = [*KINDS, "task_source"]
    rng = random.Random(seed)
    if nodes < 2:
        steps = rng.sample(range(2, outer_steps), len(kinds))
        return dict(zip(steps, kinds, strict=True))
    loss = rng.randrange(2, outer_steps - 4 - NODE_GAP)
    join = rng.randrange(loss + NODE_GAP, outer_steps - 4)
    free = [s for s in range(2, outer_steps) if s not in (loss, join)]
    steps = rng.sample(free, len(kinds))
    plan = dict(zip(steps, kinds, strict=True))
    plan.update({loss: "node_loss", join: "node_join"})
    return dict(sorted(plan.items()))


def driver_kill_step(outer_steps: int, seed: int, plan: dict[int, str]) -> int:
    """The checkpoint (outer steps done) at which the driver is SIGKILLed: a random one, not
    within a node loss's stretch (from the step before the loss to two steps after the join: the
    driver started again must find the cluster whole, each node fault be asked once, and the
    workers started on the new node have a step more to answer, under load, before the records
    of the pool growing back could go with the killed driver).

    The draw is made among the steps outside loss - 1 .. join + 1 and, when it falls on join + 2,
    moved to the next step left, so that the plans of published runs stay as they were."""
    where = {kind: step for step, kind in plan.items()}
    banned: set[int] = set()
    if "node_loss" in where:
        banned = set(range(where["node_loss"] - 1, where.get("node_join", outer_steps) + 2))
    candidates = [k for k in range(3, outer_steps - 1) if k not in banned]
    if not candidates:
        raise ValueError(f"no outer step left for the driver kill in {outer_steps} steps")
    pick = candidates[random.Random(seed + 1).randrange(len(candidates))]
    if "node_loss" in where and pick == where.get("node_join", outer_steps) + 2:
        later = [k for k in candidates if k > pick]
        earlier = [k for k in candidates if k < where["node_loss"] - 1]
        if not later and not earlier:
            raise ValueError(f"no outer step left for the driver kill in {outer_steps} steps")
        pick = later[0] if later else earlier[-1]
    return pick


# ---------------------------------------------------------------------- the driver process
def _trainer_kwargs(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    from distributed_reptile import TaskGenerator
    from distributed_reptile.sine import SupervisedRegressor, make_sine_task

    init: dict[str, Any] = {
        "log_to_driver": False,
        "runtime_env": {"env_vars": {CHAOS_DIR_ENV: folder}},
    }
    if not args.ray_address:
        init["num_cpus"] = max(2, args.workers)
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
        "ray_address": args.ray_address or None,
        "ray_init_kwargs": init,
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
        trainer = ReptileMetaRL.load(
            last, **{k: kwargs[k] for k in ("ray_init_kwargs", "ray_address")}
        )
    else:
        trainer = ReptileMetaRL(**kwargs)
    with trainer:
        injector = FaultInjector(
            plan,
            folder,
            work / "faults.jsonl",
            args.seed + trainer.num_outer_steps,
            requests=work / "requests" if args.ray_address else None,
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
