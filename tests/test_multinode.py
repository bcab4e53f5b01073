"""A real two-node Ray cluster (head + second node in a private network namespace, only ``lo``):
a training job submitted with ``ray job submit`` runs on both nodes, writes its outputs, and
survives losing one: with room on the head for the lost node's worker, and with none (Ray's
default health checks), where the lost node's workers are dropped and the pool grows back when a
new node joins.

Each test starts its own cluster with :class:`multinode.NamespaceCluster` (token auth on, fresh
token) and tears it down by the processes it started, then asserts that none is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from multinode import FAST_HEALTH_CHECK, NamespaceCluster, namespace_support
from safetensors.torch import load_file

from distributed_reptile.cli import main

REPO = Path(__file__).resolve().parents[1]
NO_NAMESPACES = namespace_support()

pytestmark = [
    pytest.mark.multinode,
    pytest.mark.skipif(
        NO_NAMESPACES is not None, reason=f"needs a network namespace: {NO_NAMESPACES}"
    ),
]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder for the cluster's temp dir (Ray's socket paths must stay under 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="drmn_", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """The job's working dir, as ``ray job submit --working-dir`` uploads it: just the configs."""
    wd = tmp_path / "job"
    shutil.copytree(REPO / "configs", wd / "configs")
    return wd


def _train_entrypoint(out: Path, *overrides: str) -> list[str]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    return ["distributed-reptile", "train", "configs/smoke.yaml", "--output", str(out), *sets]


def _wait_job(cluster: NamespaceCluster, submit: Any, job_id: str, timeout: float) -> str:
    try:
        submit.wait(timeout=timeout)
    except Exception:
        submit.kill()
        raise AssertionError(
            f"job {job_id} did not finish in {timeout}s:\n{cluster.job_log(job_id)[-4000:]}"
        ) from None
    status = cluster.job_status(job_id)
    assert submit.returncode == 0 and status == "SUCCEEDED", (
        f"job {job_id}: ray job submit exited {submit.returncode}, status {status}:\n"
        f"{cluster.job_log(job_id)[-4000:]}"
    )
    return status


def _train_serial(out: Path, overrides: list[str]) -> None:
    sets = [arg for item in overrides for arg in ("--set", item)]
    assert main(["train", str(REPO / "configs" / "smoke.yaml"), *sets, "--output", str(out)]) == 0


def _assert_same_weights(ckpt_a: Path, ckpt_b: Path) -> None:
    a = load_file(str(ckpt_a / "meta_policy.safetensors"))
    b = load_file(str(ckpt_b / "meta_policy.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different}"


def _records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "step_records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _first_checkpoint_state(out: Path, timeout: float, submit: Any) -> dict[str, Any]:
    """The trainer state of the first checkpoint to appear (written once per outer step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert submit.poll() is None, "the job ended before its first checkpoint"
        ckpts = (out / "checkpoints").glob("meta_ckpt_outer_*")
        for ckpt in sorted(ckpts, key=lambda p: int(p.name.rsplit("_", 1)[1])):
            try:
                return dict(json.loads((ckpt / "trainer_state.json").read_text()))
            except (OSError, ValueError):
                continue  # pruned or being replaced: look again
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint in {out / 'checkpoints'} after {timeout}s")


def _newest_checkpoint_step(out: Path) -> int:
    steps = [int(p.name.rsplit("_", 1)[1]) for p in (out / "checkpoints").glob("meta_ckpt_outer_*")]
    return max(steps, default=0)


def test_training_job_survives_losing_a_node_and_finishes_on_the_other(
    short_dir: Path, job_dir: Path, tmp_path: Path
) -> None:
    """The second node is killed mid-run; its worker comes back on the head and the run ends
    with the weights of a serial run. The partial sums are combined on the nodes
    (``node_reduction=true``, also once one node is left): the sums kept on the lost node are
    made again by rerunning their tasks.

    Ray puts an actor that asks for no resources, as the run's task source does, on a random
    node, and the task source does not survive its node. So that it is on the head (the driver's
    node, which this test keeps), the second node joins only once the task source is up; a
    detached actor holds one of the head's two CPUs until then, so that the second worker waits
    for the second node instead of starting on the head, and is released before the node goes.
    """
    out = tmp_path / "run"
    outer_steps = 5
    overrides = [f"outer_steps={outer_steps}", "inner_steps=256"]
    # node failure is detected in seconds instead of about a minute
    cluster = NamespaceCluster(short_dir, head_cpus=2, worker_cpus=1, head_env=FAST_HEALTH_CHECK)
    try:
        cluster.start_head()
        holder = cluster.hold_head_cpus(1)
        entrypoint = _train_entrypoint(out, *overrides, "node_reduction=true")
        submit = cluster.submit(entrypoint, job_dir, "node_loss")
        source_node = cluster.wait_for_actor("TaskSource", submit)
        cluster.start_second_node()
        ids = cluster.node_ids()
        assert source_node == ids["head"]
        state = _first_checkpoint_state(out, timeout=180, submit=submit)
        before = {n for s in state["step_totals"]["sessions"] for n in s["tasks_per_node"]}
        assert before == {ids["head"], ids["second"]}, "tasks ran on one node only before the loss"
        os.kill(holder, signal.SIGKILL)  # room on the head for the worker of the lost node
        killed = cluster.kill_second_node()
        assert killed, "the second node was already gone"
        # steps finished before the kill have a checkpoint by now (a step's checkpoint is
        # written before the next step starts, so every later step started after the kill)
        steps_at_kill = _newest_checkpoint_step(out)
        _wait_job(cluster, submit, "node_loss", timeout=300)
        dead = [n for n in cluster.nodes() if n["node_id"] == ids["second"]]
        assert dead and dead[0]["state"] == "DEAD"
    finally:
        left = cluster.teardown()
    assert left == [], f"processes left in the namespace: {left}"

    # the job's outputs, as a submitted run writes them
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["outer_steps"] == outer_steps
    assert set(summary["tasks_per_node"]) == {ids["head"], ids["second"]}
    assert sum(summary["tasks_per_node"].values()) == outer_steps * 4
    ckpt = Path(summary["last_checkpoint"])
    assert ckpt == out / "checkpoints" / f"meta_ckpt_outer_{outer_steps}"
    assert json.loads((ckpt / "trainer_state.json").read_text())["num_outer_steps"] == outer_steps
    assert (ckpt / "meta_policy.safetensors").stat().st_size > 0
    assert (out / "config.yaml").exists() and any((out / "tb").iterdir())
    records = _records(out)
    assert [r["outer_step"] for r in records] == list(range(1, outer_steps + 1))
    assert all(sum(r["tasks_per_node"].values()) == 4 for r in records), "a task was dropped"
    # the step running at the kill may still hold tasks of the lost node; later ones cannot
    after = [r for r in records if r["outer_step"] > steps_at_kill + 1]
    assert after, "the node was lost too late to see training continue without it"
    assert all(set(r["tasks_per_node"]) == {ids["head"]} for r in after)
    # the lost tasks (and the tasks whose sums were lost) were run again, not dropped: the
    # weights equal a serial run's, bit for bit
    serial = tmp_path / "serial"
    _train_serial(serial, ["backend=serial", *overrides])
    _assert_same_weights(
        Path(summary["last_checkpoint"]), serial / "checkpoints" / f"meta_ckpt_outer_{outer_steps}"
    )


# ---------------------------------------------------------------------- a node lost for good

#: A learner that holds its task while a "hold" file of the task's outer step exists (and leaves a
#: marker file saying so), so a test can kill a node while every worker is inside a task. Written
#: into the job's working dir, which is on the workers' and (through PYTHONPATH) the driver's path.
GATED_LEARNER = """
import os
import time

from distributed_reptile import InnerLearner

HOLDS = {holds!r}  # outer step (0-based) -> hold file
BATCH = {batch}


class GatedLearner(InnerLearner):
    def run(self, job, meta_weights):
        hold = HOLDS.get(job.spec.meta_step // BATCH)
        if hold is not None and os.path.exists(hold):
            open(f"{{hold}}.{{job.spec.meta_step}}.{{os.getpid()}}", "w").close()
            while os.path.exists(hold):
                time.sleep(0.1)
        return super().run(job, meta_weights)
"""


def _gated_job(job_dir: Path, holds: dict[int, Path], batch: int = 4) -> list[Path]:
    """Write the gated learner into ``job_dir``; create the hold files."""
    text = GATED_LEARNER.format(holds={k: str(v) for k, v in holds.items()}, batch=batch)
    (job_dir / "gated_learner.py").write_text(text)
    for hold in holds.values():
        hold.touch()
    return list(holds.values())


def _wait_held(hold: Path, count: int, submit: Any, timeout: float = 300) -> None:
    """Wait until ``count`` tasks are held by ``hold``."""
    deadline = time.monotonic() + timeout
    while len(list(hold.parent.glob(f"{hold.name}.*"))) < count:
        assert submit.poll() is None, "the job ended before its tasks were held"
        assert time.monotonic() < deadline, f"{count} tasks not held by {hold} in {timeout}s"
        time.sleep(0.2)


#: The runs that lose a node: five outer steps of short inner loops.
NODE_LOSS_STEPS = ["outer_steps=5", "inner_steps=64"]
#: Four workers of one CPU on a head and a second node of two CPUs each: no room to spare.
NODE_LOSS_RUN = [*NODE_LOSS_STEPS, "num_workers=4", "inner_learner_cls=gated_learner:GatedLearner"]


def _node_loss_entrypoint(out: Path) -> list[str]:
    return ["env", "PYTHONPATH=.", *_train_entrypoint(out, *NODE_LOSS_RUN)]


@pytest.fixture(scope="module")
def node_loss_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The last checkpoint of the node-loss runs' config trained on the serial backend."""
    serial = tmp_path_factory.mktemp("serial")
    _train_serial(serial / "run", ["backend=serial", *NODE_LOSS_STEPS])
    return serial / "run" / "checkpoints" / "meta_ckpt_outer_5"


def _pool_events(record: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (e["kind"], e["workers"])
        for e in record["retries"]
        if e["kind"] in ("worker_dropped", "worker_added")
    ]


def _kill_second_node_while_held(
    cluster: NamespaceCluster, hold: Path, submit: Any, job_id: str
) -> float:
    """Kill the second node while each of the four workers holds a task of ``hold``'s step, let
    the tasks go, and wait until the two workers of the lost node are dropped; return how long
    that took from the kill."""
    _wait_held(hold, 4, submit)
    killed = cluster.kill_second_node()
    assert killed, "the second node was already gone"
    t_kill = time.monotonic()
    hold.unlink()
    dropped = cluster.wait_for_log(job_id, " dropped: its node ", 2, submit, timeout=300)
    return dropped - t_kill


@pytest.mark.slow
def test_pool_grows_back_when_a_node_joins_after_one_was_lost(
    short_dir: Path, job_dir: Path, tmp_path: Path, node_loss_reference: Path
) -> None:
    """Ray's default health checks and no spare CPU: the lost node's workers can be neither
    restarted nor replaced. They are dropped (one line each), their tasks rerun on the head's two
    workers, and step 4 runs on those two. Then a new second node joins while step 4 is held: the
    two dropped workers start on it, and the last step runs on both nodes again. The weights are a
    serial run's."""
    out = tmp_path / "run"
    hold3, hold4 = _gated_job(job_dir, {2: tmp_path / "hold_step3", 3: tmp_path / "hold_step4"})
    cluster = NamespaceCluster(short_dir, head_cpus=2, worker_cpus=2)
    try:
        cluster.start()
        ids = cluster.node_ids()
        submit = cluster.submit(_node_loss_entrypoint(out), job_dir, "node_back")
        detection = _kill_second_node_while_held(cluster, hold3, submit, "node_back")
        print(f"workers of the killed node dropped {detection:.1f} s after the kill")
        _wait_held(hold4, 2, submit)  # step 4 runs on the two workers left
        t_join = time.monotonic()
        cluster.start_second_node(temp_dir="ray3", wait=False)
        back = cluster.wait_for_log("node_back", " is back, on node ", 2, submit, timeout=240)
        print(f"the pool was back to 4 workers {back - t_join:.1f} s after `ray start` of a node")
        new_node = [n["node_id"] for n in cluster.alive_nodes() if n["node_id"] != ids["head"]]
        hold4.unlink()
        _wait_job(cluster, submit, "node_back", timeout=300)
        log = cluster.job_log("node_back")
    finally:
        left = cluster.teardown()
    assert left == [], f"processes left in the namespace: {left}"

    assert len(new_node) == 1 and new_node[0] != ids["second"]
    lines = [line for line in log.splitlines() if " dropped: " in line]
    assert len(lines) == 2
    assert "Each worker asks for 1 CPU; the live nodes have 2 CPU in all" in lines[0]
    assert "Running on with 2 of 4 workers" in lines[1]
    records = _records(out)
    assert [r["outer_step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(sum(r["tasks_per_node"].values()) == 4 for r in records), "a task was dropped"
    both = {ids["head"]: 2, ids["second"]: 2}
    assert [r["tasks_per_node"] for r in records[:2]] == [both, both]
    assert [_pool_events(r) for r in records] == [
        [], [], [("worker_dropped", 3), ("worker_dropped", 2)],
        [("worker_added", 3), ("worker_added", 4)], [],
    ]  # fmt: skip
    # the held tasks of the lost node's workers ran again on the head; step 4 on its two workers
    assert records[2]["tasks_per_node"] == {ids["head"]: 4}
    assert records[3]["tasks_per_node"] == {ids["head"]: 4}
    assert len(set(records[3]["task_pids"])) == 2
    for record in records[4:]:
        assert record["tasks_per_node"] == {ids["head"]: 2, new_node[0]: 2}
        assert len(set(record["task_pids"])) == 4
    _assert_same_weights(out / "checkpoints" / "meta_ckpt_outer_5", node_loss_reference)
