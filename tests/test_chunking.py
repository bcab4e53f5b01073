"""How a batch's tasks are split into actor calls (``tasks_per_call``): the sizes of guided calls,
the meta weights on every split, and what a slow worker holds."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from conftest import assert_same_weights, cartpole_kwargs, weights_of
from test_reliability import flaky_params

from distributed_reptile import ReptileMetaRL
from distributed_reptile.bench.cluster_driver import ShiftLearner
from distributed_reptile.runners.chunking import (
    GUIDED_MIN_SHARE,
    GUIDED_SPREAD,
    SPEED_WEIGHT_RANGE,
    ChunkPlan,
    WorkerSpeeds,
)
from distributed_reptile.settings import check_tasks_per_call


@pytest.mark.parametrize(
    ("batch", "workers"), [(1, 1), (7, 3), (16, 2), (64, 8), (1024, 8), (1000, 64), (5000, 16)]
)
def test_guided_calls_cover_the_batch_shrink_and_stay_few(batch: int, workers: int) -> None:
    plan = ChunkPlan("guided", batch, workers, pipeline_depth=2)
    sizes = plan.sizes()
    assert sum(sizes) == batch and all(s >= 1 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # the calls shrink as the batch runs out
    assert plan.largest == sizes[0] and plan.calls() == len(sizes)
    share = batch / workers
    # a worker's two queued calls at the start hold about 1 / GUIDED_SPREAD of its even share
    assert sum(sizes[:2]) <= max(2, share / GUIDED_SPREAD + 2)
    smallest = -(-batch // (GUIDED_MIN_SHARE * workers))
    assert all(s >= smallest for s in sizes[:-1])
    # the calls grow with the workers and slowly with the tasks, never past one per task
    assert len(sizes) <= min(batch, 2 * GUIDED_SPREAD * 2 * workers + GUIDED_MIN_SHARE * workers)


def test_the_call_sizes_of_each_setting() -> None:
    assert len(ChunkPlan("guided", 1024, 8, 2).sizes()) == 54
    assert ChunkPlan("guided", 1024, 8, 2).sizes()[:3] == [32, 31, 31]
    assert ChunkPlan("guided", 16, 8, 2).sizes() == [1] * 16  # few tasks: one per call
    assert ChunkPlan("auto", 10, 4, 2).sizes() == [3, 3, 3, 1]
    assert ChunkPlan(3, 10, 4, 2).sizes() == [3, 3, 3, 1]
    assert ChunkPlan(1, 5, 4, 2).sizes() == [1] * 5
    for setting in (1, 3, "auto"):
        plan = ChunkPlan(setting, 10, 4, 2)
        assert plan.calls() == len(plan.sizes())
    # fewer workers up: larger guided calls for the same tasks left
    plan = ChunkPlan("guided", 1024, 8, 2)
    assert plan.next(512, [0, 1]) > plan.next(512, list(range(8))) >= plan.smallest
    assert check_tasks_per_call("guided") == "guided"
    with pytest.raises(ValueError, match="or 'guided'"):
        check_tasks_per_call("balanced")


class _Result:
    def __init__(self, seconds: float) -> None:
        self.timings = {"total": seconds}


def test_guided_calls_follow_each_workers_measured_speed() -> None:
    speeds = WorkerSpeeds()
    plan = ChunkPlan("guided", 1024, 4, 2, speeds)
    up = [0, 1, 2, 3]
    assert plan.next(1024, up, 0) == plan.next(1024, up, 3) == 64  # nothing measured: alike
    assert plan.largest == 64 and plan.most == 128  # a worker twice as fast as the mean, at most
    for worker in (0, 1, 2):
        speeds.observe(worker, [_Result(0.02)] * 10)  # 50 tasks per second
    speeds.observe(3, [_Result(0.08)] * 10)  # a quarter as fast
    assert speeds.weight(3, up) == pytest.approx(12.5 / 40.625)
    assert plan.next(1024, up, 3) == 20 and plan.next(1024, up, 0) == 79
    assert plan.next(40, up, 3) == 10  # the smallest call (32) scaled down as well
    assert plan.next(1024, [0, 1, 2], 0) == 86  # the slow one left out of the mean: all alike
    speeds.observe(3, [_Result(0.02)] * 10)  # it got faster: an average of the two
    assert speeds.speeds[3] == pytest.approx((50 + 12.5) / 2)
    speeds.observe(3, [])  # nothing to learn from
    speeds.forget(3)
    assert speeds.weight(3, up) == 1.0
    speeds.forget(2)
    speeds.observe(2, [_Result(100.0)])  # clipped: never below 1/16 of the mean
    assert speeds.weight(2, up) == SPEED_WEIGHT_RANGE[0]
    assert ChunkPlan(4, 1024, 4, 2, speeds).next(1024, up, 2) == 4  # only guided calls scale


def test_guided_calls_with_a_task_failing_inside_one_give_the_serial_weights(
    ray_session, tmp_path
) -> None:
    """24 tasks per outer step on 2 workers: guided calls of 3, 3, 3, 2, ... tasks whose int64
    sums meet on the node; a task of the second step fails once and runs again alone, the other
    tasks of its call going back to the queue. The meta weights are a serial run's, bit for bit."""
    run: dict[str, Any] = {"inner_steps": 64, "outer_steps": 2, "task_batch_size": 24}
    assert ChunkPlan("guided", 24, 2, 2).sizes()[:4] == [3, 3, 3, 2]
    with ReptileMetaRL(**cartpole_kwargs(**run)) as meta:
        meta.learn()
        serial, records = weights_of(meta), meta.step_records
    fresh = [t for t in records[1]["tasks"] if not t["revisit"]]
    params = flaky_params(fresh[1]["random_seed"], tmp_path, once=True)
    kwargs = cartpole_kwargs(
        **run, backend="ray", num_workers=2, tasks_per_call="guided", node_reduction=True
    )
    with ReptileMetaRL(**{**kwargs, "tasks_generator_params": params}) as meta:
        meta.learn()
        errors = [e for e in meta.runner.retry_events if e["kind"] == "error"]  # type: ignore[attr-defined]
        assert [e["meta_step"] for e in errors] == [fresh[1]["meta_step"]]
        assert_same_weights(weights_of(meta), serial)


def _slow_worker_run(
    tasks_per_call: str, tmp_path: Any, outer_steps: int
) -> tuple[Any, list[dict[str, Any]]]:
    """Outer steps of 16 sleeping tasks on 2 workers, one of which sleeps 10 times longer."""
    kwargs = cartpole_kwargs(
        backend="ray",
        num_workers=2,
        outer_steps=outer_steps,
        task_batch_size=16,
        inner_learner_cls=ShiftLearner,
        inner_loop_params={
            "sleep_seconds": 0.02,
            "slow_factor": 10.0,
            "slow_flag": str(tmp_path / f"slow-{tasks_per_call}"),
        },
        tasks_per_call=tasks_per_call,
    )
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn()
        return weights_of(meta), meta.step_records


def test_a_slow_worker_holds_less_than_its_share_with_guided_calls(ray_session, tmp_path) -> None:
    """With "auto" each of the 2 workers holds its 8 tasks, so the slow one (0.2 s per task) holds
    the step for 1.6 s; with guided calls it holds two calls of 2 tasks at the start, and in the
    next outer step, its speed measured, calls of one task: the fast worker runs the rest. The
    steps end sooner, with the same meta weights."""
    results = {"auto": _slow_worker_run("auto", tmp_path, 2)}
    results["guided"] = _slow_worker_run("guided", tmp_path, 2)
    held = {}
    for mode, (_, records) in results.items():
        for step, record in enumerate(records):
            slow_pids = {
                pid
                for pid, t in zip(record["task_pids"], record["task_timings"], strict=True)
                if t["learn"] >= 0.15
            }
            assert len(slow_pids) == 1, f"{mode}: one slow worker, got {slow_pids}"
            held[mode, step] = Counter(record["task_pids"])[slow_pids.pop()]
    assert held["auto", 0] == held["auto", 1] == 8
    # two calls of 2 tasks at the start, perhaps one more task once its speed is known
    assert held["guided", 0] <= 5
    # calls of one task (two queued), perhaps a third: its speed was measured in the first step
    assert held["guided", 1] <= 3
    for step in (0, 1):
        guided, auto = (results[m][1][step]["step_seconds"] for m in ("guided", "auto"))
        assert guided < auto
    assert_same_weights(results["auto"][0], results["guided"][0])
