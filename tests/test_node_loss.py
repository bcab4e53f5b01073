"""A worker whose node is lost for good is dropped from the pool, its tasks run on the workers
left, and the pool grows back when the cluster has room again; the weights stay bit-identical.

Here on the local Ray instance, with ``ray.nodes()`` telling of a lost node and of fewer CPUs;
``tests/test_multinode.py`` kills a real node of a two-node cluster.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import ray
from conftest import assert_same_weights, cartpole_kwargs, weights_of

from distributed_reptile import InnerLearner, ReptileMetaRL
from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.runners import ray_actors
from distributed_reptile.runners.ray_runner import RayRunner

RUN: dict[str, Any] = {"inner_steps": 64, "outer_steps": 4, "task_batch_size": 4}
LOST_NODE = "f" * 56


class SlowLearner(InnerLearner):
    """Takes a second longer per task, so that a batch is still running when the node goes."""

    def run(self, job: Any, meta_weights: Any) -> Any:
        time.sleep(1.0)
        return super().run(job, meta_weights)


class LoseNodeThenGetItBack(MetaCallback):
    """In outer step 2, 0.5 s in, worker 1's node is reported dead and the cluster as one CPU
    short; from outer step 3 on it has the CPU again (a node joined)."""

    def __init__(self, cluster: dict[str, Any]) -> None:
        super().__init__()
        self.cluster = cluster

    def on_outer_step_start(self, outer_step: int) -> None:
        if outer_step == 1:
            threading.Timer(0.5, self._lose).start()
        elif outer_step == 2:
            self.cluster.update(cpus=2.0, lost=False)

    def _lose(self) -> None:
        runner = self.trainer.runner
        assert isinstance(runner, RayRunner)
        runner._pool.worker_info[1]["node_id"] = LOST_NODE
        self.cluster.update(cpus=1.0, lost=True)


@pytest.fixture
def cluster_view(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``ray.nodes()`` reports: the real node with ``cpus`` CPUs, and with ``lost`` a dead
    node (``LOST_NODE``); checked every 0.2 s instead of 5."""
    view: dict[str, Any] = {"cpus": 2.0, "lost": False}
    real_nodes = ray.nodes

    def nodes() -> list[dict[str, Any]]:
        out = [{**n, "Resources": {**n["Resources"], "CPU": view["cpus"]}} for n in real_nodes()]
        if view["lost"]:
            out.append({"NodeID": LOST_NODE, "Alive": False, "Resources": {"CPU": 1.0}})
        return out

    monkeypatch.setattr(ray, "nodes", nodes)
    monkeypatch.setattr(ray_actors, "CLUSTER_CHECK_EVERY_S", 0.2)
    return view


def test_worker_of_a_lost_node_is_dropped_its_tasks_rerun_and_the_pool_grows_back(
    ray_session, cluster_view: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with ReptileMetaRL(**cartpole_kwargs(**RUN)) as meta:
        meta.learn()
        reference = weights_of(meta)
    kwargs = cartpole_kwargs(**RUN, backend="ray", num_workers=2, inner_learner_cls=SlowLearner)
    with ReptileMetaRL(**kwargs) as meta:
        runner = meta.runner
        assert isinstance(runner, RayRunner)
        first_pids = [w["pid"] for w in runner.worker_info]
        meta.learn(callback=LoseNodeThenGetItBack(cluster_view))
        records = meta.step_records
        weights = weights_of(meta)
        assert runner.workers_active == 2
        back_pid = runner.worker_info[1]["pid"]
    err = capsys.readouterr().err

    changes = [[(e["kind"], e["worker"], e.get("workers")) for e in r["retries"]] for r in records]
    assert changes[:2] == [[], [("worker_dropped", 1, 1)]]
    # back once the cluster has room: during step 3 or, if it starts slowly, step 4
    assert changes[2] + changes[3] == [("worker_added", 1, 2)]
    # every task of step 2 ran, on worker 0: worker 1's running and queued tasks ran again there
    assert [len(r["task_pids"]) for r in records] == [4, 4, 4, 4]
    assert set(records[1]["task_pids"]) == {first_pids[0]}
    assert back_pid not in first_pids and back_pid in records[3]["task_pids"]
    assert "Ray worker 1 dropped: its node ffffffff was lost and the live nodes have no room" in err
    assert "Each worker asks for 1 CPU; the live nodes have 1 CPU in all" in err
    assert "Running on with 1 of 2 workers" in err
    assert "Ray worker 1 is back" in err and "2 of 2 workers" in err
    assert_same_weights(weights, reference)


def test_no_extra_cluster_calls_per_task(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster is looked at once per ``CLUSTER_CHECK_EVERY_S`` at most, not per task."""
    calls: list[float] = []
    real_nodes = ray.nodes

    def nodes() -> list[dict[str, Any]]:
        calls.append(time.perf_counter())
        return list(real_nodes())

    monkeypatch.setattr(ray, "nodes", nodes)
    kwargs = cartpole_kwargs(
        inner_steps=64, outer_steps=6, task_batch_size=4, backend="ray", num_workers=2
    )
    with ReptileMetaRL(**kwargs) as meta:
        calls.clear()
        start = time.perf_counter()
        meta.learn()
        seconds = time.perf_counter() - start
        assert meta.runner.workers_active == 2  # type: ignore[attr-defined]
        assert not any(r["retries"] for r in meta.step_records)
    assert 1 <= len(calls) <= 1 + seconds / ray_actors.CLUSTER_CHECK_EVERY_S
