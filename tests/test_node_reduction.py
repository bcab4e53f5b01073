"""Node reduction (``node_reduction=True``): the calls keep their partial sums on their nodes, the
sums are combined there and the driver receives one per outer step. The same meta weights, bit for
bit, as with each call's sum sent to the driver and as the serial backend, also when a worker dies
after its call answered, taking its kept sum with it (its tasks run again for their sums)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest
import ray
import torch as th
from conftest import assert_same_weights, cartpole_kwargs, weights_of
from ray.exceptions import ObjectLostError

from distributed_reptile import ReptileMetaRL
from distributed_reptile.runners import ray_actors
from distributed_reptile.runners.ray_runner import wants_node_reduction
from distributed_reptile.runners.ray_sums import NodeSums
from distributed_reptile.settings import check_node_reduction

#: Eight tasks per step on two workers, one task per call: calls sent once others have answered
#: take the sums already kept on their node along, so sums are added on the workers as well as
#: combined at the end of the step.
RUN: dict[str, Any] = {"outer_steps": 2, "task_batch_size": 8, "inner_steps": 64}


@pytest.fixture(scope="module")
def serial_run() -> tuple[dict[str, Any], float]:
    """The serial run's weights, and the norm of its last meta-update."""
    with ReptileMetaRL(**cartpole_kwargs(**RUN)) as meta:
        meta.learn()
        return weights_of(meta), meta.last_update_norm


@pytest.fixture(scope="module")
def serial_weights(serial_run) -> dict[str, Any]:
    return serial_run[0]


def _ray_run(node_reduction: Any, **overrides: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    kwargs = cartpole_kwargs(
        **RUN, backend="ray", num_workers=2, node_reduction=node_reduction, **overrides
    )
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        return weights_of(meta), list(meta.runner.retry_events)  # type: ignore[attr-defined]


def _count_combines(
    monkeypatch: pytest.MonkeyPatch, received: list[Any] | None = None
) -> list[int]:
    calls: list[int] = []
    original = NodeSums.combine

    def counted(self: NodeSums) -> Any:
        calls.append(len(self.loose))
        total = original(self)
        if received is not None:
            received.append(total)
        return total

    monkeypatch.setattr(NodeSums, "combine", counted)
    return calls


def test_node_reduction_gives_the_weights_of_per_call_sums_and_of_serial(
    ray_session, serial_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial_weights, serial_norm = serial_run
    received: list[Any] = []
    combines = _count_combines(monkeypatch, received)
    kwargs = cartpole_kwargs(**RUN, backend="ray", num_workers=2, node_reduction=True)
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        on, events = weights_of(meta), list(meta.runner.retry_events)  # type: ignore[attr-defined]
        on_norm = meta.last_update_norm
        float32 = [n for n, p in meta.meta_params().items() if p.dtype == th.float32]
    assert len(combines) == RUN["outer_steps"] and all(n >= 1 for n in combines)
    assert events == []
    assert_same_weights(serial_weights, on)
    assert on_norm == serial_norm  # the same float, though the worker made the means
    # the step's one sum came back finished: float32 means in place of int64 sums
    assert len(received) == RUN["outer_steps"]
    for total in received:
        assert total.sums == {} and total.means is not None
        assert float32 and all(total.means[n].dtype == np.float32 for n in float32)
        assert total.count == RUN["task_batch_size"]
    # one node here: "auto" leaves it off, as False does (each call's sum to the driver)
    off, _ = _ray_run("auto", tasks_per_call="auto")
    assert len(combines) == RUN["outer_steps"]
    assert_same_weights(serial_weights, off)


def test_a_sum_lost_after_its_call_answered_is_made_again(
    ray_session, serial_weights, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the first outer step, once every task has answered and before the sums are combined,
    the worker process that kept the first sum is killed (Ray restarts it): the sums it owned
    are gone, their tasks run again for their sums, and the weights are a serial run's."""
    original = NodeSums.combine
    killed: dict[str, Any] = {}

    def kill_first(self: NodeSums) -> Any:
        if not killed:
            record = self.loose[0]
            killed["jobs"] = {j for r in self.loose if r.worker == record.worker for j in r.jobs}
            pid = self.batch.pool.worker_info[record.worker]["pid"]  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while True:  # until Ray knows the owner died (a read may still succeed just after)
                try:
                    ray.get(record.ref, timeout=5)
                except ObjectLostError:
                    break
                assert time.monotonic() < deadline, "the killed worker's sum is still readable"
                time.sleep(0.2)
        return original(self)

    monkeypatch.setattr(NodeSums, "combine", kill_first)
    weights, events = _ray_run(True)
    lost = [e for e in events if e["kind"] == "sum_lost"]
    assert {e["index"] for e in lost} == killed["jobs"]
    assert all(e["meta_step"] < RUN["task_batch_size"] for e in lost)  # the first step's tasks
    assert "is lost" in lost[0]["reason"]
    assert_same_weights(serial_weights, weights)


def test_sums_kept_on_a_lost_node_are_made_again(
    ray_session, serial_weights, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster check shows the node holding some sums gone: their tasks run again for their
    sums, and the weights are a serial run's. (Here the sums that worker 1 keeps in the first
    outer step are noted as kept on a second node, which ``ray.nodes()`` then reports dead.)"""
    ghost = "e" * 56
    view = {"lost": False}
    real_nodes = ray.nodes

    def nodes() -> list[dict[str, Any]]:
        return [*real_nodes(), {"NodeID": ghost, "Alive": not view["lost"], "Resources": {}}]

    monkeypatch.setattr(ray, "nodes", nodes)
    monkeypatch.setattr(ray_actors, "CLUSTER_CHECK_EVERY_S", 0.2)
    kept, combine = NodeSums.kept, NodeSums.combine
    moved: set[int] = set()

    def kept_on_ghost(self: NodeSums, stored: Any, idx: int, *args: Any) -> None:
        kept(self, stored, idx, *args)
        if idx == 1 and not view["lost"]:
            self.loose[-1].node = ghost
            moved.update(self.loose[-1].jobs)

    def lose_ghost(self: NodeSums) -> Any:
        if not view["lost"]:
            view["lost"] = True
            time.sleep(0.3)  # the next cluster check is due
        return combine(self)

    monkeypatch.setattr(NodeSums, "kept", kept_on_ghost)
    monkeypatch.setattr(NodeSums, "combine", lose_ghost)
    weights, events = _ray_run(True)
    lost = [e for e in events if e["kind"] == "sum_lost"]
    assert moved and {e["index"] for e in lost} == moved
    assert all(f"its node {ghost[:8]} was lost" in e["reason"] for e in lost)
    assert_same_weights(serial_weights, weights)


def test_auto_combines_on_the_nodes_when_there_are_several_and_the_sums_are_large() -> None:
    assert not wants_node_reduction("auto", nodes=1, calls=1024, params=10_000_000)
    assert not wants_node_reduction("auto", nodes=4, calls=8, params=10_000)  # 0.5 MB kept back
    assert wants_node_reduction("auto", nodes=4, calls=8, params=1_000_000)  # 56 MB
    assert wants_node_reduction("auto", nodes=2, calls=1024, params=10_000)  # 82 MB
    assert wants_node_reduction(True, nodes=1, calls=1, params=1)
    assert not wants_node_reduction(False, nodes=4, calls=64, params=10_000_000)


def test_a_bad_node_reduction_names_the_choices() -> None:
    for good in (True, False, "auto"):
        assert check_node_reduction(good) == good
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"node_reduction must be true .* or 'auto'"):
            check_node_reduction(bad)
    with pytest.raises(ValueError, match="node_reduction must be"):
        ReptileMetaRL(**cartpole_kwargs(node_reduction="on"))
