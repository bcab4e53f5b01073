"""Feedback while it runs: step records, TensorBoard scalars, progress bar, budget summary;
and nothing written unless asked."""

from __future__ import annotations

import glob
import math
import os
import tempfile

from conftest import cartpole_kwargs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distributed_reptile import ReptileMetaRL

RECORD_KEYS = {
    "outer_step",
    "meta_lr",
    "ep_return_mean",
    "ep_return_min",
    "ep_return_max",
    "episodes",
    "env_steps",
    "inner_seconds",
    "wait_seconds",
    "meta_update_seconds",
    "step_seconds",
    "tasks_per_second",
    "update_norm",
    "tasks",
    "revisits",
    "skipped_tasks",
    "tasks_per_node",
}


def test_step_record_reports_returns_steps_and_timings():
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=2)) as meta:
        meta.learn()
    assert len(meta.step_records) == 2
    for i, record in enumerate(meta.step_records):
        assert RECORD_KEYS <= set(record)
        assert record["outer_step"] == i + 1
        assert record["episodes"] > 0
        assert record["ep_return_min"] <= record["ep_return_mean"] <= record["ep_return_max"]
        assert record["env_steps"] == 4 * 128
        assert (
            record["inner_seconds"] > 0 and record["step_seconds"] >= record["meta_update_seconds"]
        )
        assert record["update_norm"] > 0 and not math.isnan(record["update_norm"])


def test_tensorboard_scalars_and_inner_logs_are_written_where_asked(tmp_path):
    tb = tmp_path / "tb"
    with ReptileMetaRL(
        **cartpole_kwargs(outer_steps=2, task_batch_size=2, tensorboard_logs=str(tb))
    ) as meta:
        meta.learn(tb_log_name="my run", log_inner_tasks=True)
    runs = [p for p in tb.iterdir() if p.name.startswith("my_run_")]
    assert len(runs) == 1
    outer = runs[0]
    assert glob.glob(str(outer / "events.out.tfevents.*"))
    acc = EventAccumulator(str(outer))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "meta/meta_lr",
        "meta/outer_step",
        "time/inner_seconds",
        "time/meta_update_seconds",
        "time/wait_seconds",
        "adaptation/ep_return_mean",
        "budget/updates_per_task",
        "budget/updates_per_outer_step",
    } <= tags
    assert [e.step for e in acc.Scalars("meta/outer_step")] == [1, 2]
    inner = sorted(p.name for p in (outer / "inner").iterdir())
    assert inner == [
        "inner_outer_1_task_1_meta_0",
        "inner_outer_1_task_2_meta_1",
        "inner_outer_2_task_1_meta_2",
        "inner_outer_2_task_2_meta_3",
    ]
    assert all(glob.glob(str(outer / "inner" / name / "events.out.tfevents.*")) for name in inner)


def test_nothing_is_written_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sb3_dirs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "SB3-*")))
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=1)) as meta:
        meta.learn()
    assert list(tmp_path.iterdir()) == []
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "SB3-*"))) == sb3_dirs_before


def test_progress_bar_and_budget_summary(capsys):
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=2, verbose=1)) as meta:
        meta.learn(progress_bar=True)
    out, err = capsys.readouterr()
    assert "gradient updates per task: 8 (4 per rollout x 2 rollouts)" in out
    assert "env steps per task: 128; per outer step: 512" in out
    assert "revisits: ratio 0.15, from meta step 1, sampling random" in out
    assert "[outer 2/2]" in out + err
    assert "2/2" in err and "tasks_per_s" in err
