"""The chaos run with small settings: every fault at once, and the run ends as if none happened."""

from __future__ import annotations

import json

import pytest

from distributed_reptile.bench.chaos import main, make_plan


def test_the_plan_has_every_fault_and_the_task_source_twice() -> None:
    plan = make_plan(20, seed=3)
    kinds = sorted(plan.values())
    assert kinds.count("task_source") == 2
    assert set(kinds) == {"exit_in_task", "ray_kill", "sigkill", "task_source", "hang"}
    assert min(plan) >= 2 and max(plan) < 20
    assert make_plan(20, seed=3) == plan


@pytest.mark.slow
def test_chaos_run_ends_with_the_undisturbed_weights_and_tasks(tmp_path, capsys) -> None:
    rc = main(["--outer-steps", "20", "--workdir", str(tmp_path / "w"), "--output", str(tmp_path)])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "chaos.json").read_text())
    assert rc == 0, out
    assert "weights identical: yes" in out and "tasks drawn identical: yes" in out
    injected = report["faults_injected"]
    assert injected["task_source"] >= 2 and injected["driver_sigkill"] == 1
    assert {"exit_in_task", "ray_kill", "sigkill", "hang"} <= set(injected)
    assert report["retries"] >= 2  # at least the task that exited and the one that hung
