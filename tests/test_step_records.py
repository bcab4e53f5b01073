"""Step records in a long run: a line each in an append-only file as the steps are made, a bounded
window in memory, and checkpoints that keep running totals instead of the records."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import cartpole_kwargs

from distributed_reptile import ReptileMetaRL
from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.checkpoint import STATE_FILE, verify_checkpoint, write_checkpoint
from distributed_reptile.cli import run_summary
from distributed_reptile.records import StepRecord
from distributed_reptile.step_history import RecentRecords, StepTotals

#: One 64-step PPO task per outer step: the cheapest real outer step.
TINY: dict[str, Any] = {"inner_steps": 64, "task_batch_size": 1}


def tiny(**overrides: Any) -> dict[str, Any]:
    return cartpole_kwargs(**{**TINY, **overrides})


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def steps_in(path: Path) -> list[int]:
    return [r["outer_step"] for r in lines(path)]


def rewrite_state(
    folder: Path, dest: Path, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> Path:
    """A copy of checkpoint ``folder`` at ``dest`` whose trainer_state.json is ``change(state)``
    (with a manifest that matches it)."""

    def copy(tmp: Path) -> None:
        for path in folder.iterdir():
            if path.name not in ("MANIFEST.json", STATE_FILE):
                shutil.copy2(path, tmp / path.name)
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        (tmp / STATE_FILE).write_text(json.dumps(change(state)), encoding="utf-8")

    return write_checkpoint(dest, copy)


class FileLines(MetaCallback):
    """Reads the step-records file at the start and at the end of each outer step."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.at_start: list[list[int]] = []
        self.at_end: list[list[int]] = []

    def _on_outer_step_start(self, outer_step: int) -> None:
        self.at_start.append(steps_in(self.path))

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        self.at_end.append(steps_in(self.path))
        return True


def test_step_records_are_appended_a_line_per_step_during_training(tmp_path: Path) -> None:
    path = tmp_path / "run" / "records.jsonl"
    seen = FileLines(path)
    with ReptileMetaRL(**tiny(outer_steps=3)) as meta:
        meta.learn(step_records_path=path, callback=seen)
        in_memory = [r.to_dict() for r in meta.step_records]
    # step k's line is written after the callbacks before it (they may add keys), before the
    # checkpoint callback: the next step starts with every earlier step in the file
    assert seen.at_start == [[], [1], [1, 2]]
    assert seen.at_end == [[], [1], [1, 2]]
    assert steps_in(path) == [1, 2, 3]
    written = lines(path)
    assert [r["env_steps"] for r in written] == [r["env_steps"] for r in in_memory]
    assert all("task_timings" in r and "tasks_per_node" in r for r in written)


def test_default_file_is_beside_the_checkpoints_and_none_without_save_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with ReptileMetaRL(**tiny(outer_steps=2)) as meta:
        meta.learn()
        assert meta.step_history.path is None
        meta.learn(save_path=str(tmp_path / "ck"), save_prefix="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert steps_in(tmp_path / "ck" / "m_step_records.jsonl") == [1, 2]


def test_memory_keeps_the_newest_records_and_totals_count_them_all(tmp_path: Path) -> None:
    with ReptileMetaRL(**tiny(outer_steps=5)) as meta:
        meta.learn(keep_records=2, step_records_path=tmp_path / "r.jsonl")
        records = meta.step_records
        assert isinstance(records, RecentRecords) and records.maxlen == 2
        assert [r.outer_step for r in records] == [4, 5]
        assert records[-1].outer_step == 5 and [r.outer_step for r in records[1:]] == [5]
        totals = meta.step_totals
        assert totals.outer_steps == 5
        assert totals.env_steps == sum(r["env_steps"] for r in lines(tmp_path / "r.jsonl"))
        assert totals.tasks == 5 and sum(totals.tasks_per_node.values()) == 5
        assert totals.seconds["step_seconds"] > 0
        assert totals.task_mean_seconds("learn") is not None
        with pytest.raises(ValueError, match="keep_records"):
            meta.learn(keep_records=0)


def test_checkpoint_size_does_not_grow_with_the_number_of_steps(tmp_path: Path) -> None:
    with ReptileMetaRL(**tiny(outer_steps=12)) as meta:
        meta.learn(save_freq=3, save_path=str(tmp_path), save_prefix="m")
    after_3 = (tmp_path / "m_outer_3" / STATE_FILE).stat().st_size
    after_12 = (tmp_path / "m_outer_12" / STATE_FILE).stat().st_size
    # the records themselves took ~1 KB a step here: nine more steps would add ~9 KB
    assert after_12 - after_3 < 200, (after_3, after_12)
    state = json.loads((tmp_path / "m_outer_12" / STATE_FILE).read_text())
    assert "step_records" not in state
    assert state["step_totals"]["outer_steps"] == 12
    assert state["step_records_file"] == str(tmp_path / "m_step_records.jsonl")
    assert state["step_records_file_relative"] == "m_step_records.jsonl"


def test_resume_truncates_the_lines_after_the_checkpoint_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "m_step_records.jsonl"
    with ReptileMetaRL(**tiny(outer_steps=4)) as meta:
        meta.learn(save_freq=2, save_path=str(tmp_path), save_prefix="m")
        first = lines(path)
    assert [r["outer_step"] for r in first] == [1, 2, 3, 4]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"outer_step": 5, "ep_ret')  # a line cut short by a kill
    with ReptileMetaRL.load(tmp_path / "m_outer_2") as resumed:
        # the newest records up to the checkpoint come back from the file
        assert [r.outer_step for r in resumed.step_records] == [1, 2]
        assert resumed.step_totals.outer_steps == 2
        resumed.learn(reset_num_timesteps=False)
        assert [r.outer_step for r in resumed.step_records] == [1, 2, 3, 4]
    again = lines(path)
    assert [r["outer_step"] for r in again] == [1, 2, 3, 4]
    # the same tasks as the uninterrupted run drew, and steps 1-2 are the original lines
    assert [r["tasks"] for r in again] == [r["tasks"] for r in first]
    assert again[:2] == first[:2]


def test_resume_into_a_new_file_starts_it_with_the_earlier_lines(tmp_path: Path) -> None:
    runs = tmp_path / "first"
    with ReptileMetaRL(**tiny(outer_steps=3)) as meta:
        meta.learn(save_freq=1, save_path=str(runs / "ck"), step_records_path=runs / "r.jsonl")
    moved = tmp_path / "moved"
    shutil.move(runs, moved)  # found by its path relative to the checkpoint
    new = tmp_path / "second" / "r.jsonl"
    with ReptileMetaRL.load(moved / "ck" / "meta_ckpt_outer_1") as resumed:
        assert [r.outer_step for r in resumed.step_records] == [1]
        resumed.learn(reset_num_timesteps=False, step_records_path=new)
    assert steps_in(new) == [1, 2, 3]
    assert lines(new)[0] == lines(moved / "r.jsonl")[0]
    assert steps_in(moved / "r.jsonl") == [1, 2, 3]  # the first run's file is left alone


def _old_format(state: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """``state`` as a checkpoint written before totals: the step records inside."""
    old = {k: v for k, v in state.items() if not k.startswith("step_")}
    old["step_records"] = [{k: v for k, v in r.items() if k != "task_timings"} for r in records]
    return old


def test_a_checkpoint_that_holds_step_records_still_loads(tmp_path: Path) -> None:
    with ReptileMetaRL(**tiny(outer_steps=2)) as meta:
        meta.learn(save_path=str(tmp_path / "new"), save_prefix="m")
    records = lines(tmp_path / "new" / "m_step_records.jsonl")
    old = rewrite_state(
        tmp_path / "new" / "m_outer_2",
        tmp_path / "old" / "m_outer_2",
        lambda state: _old_format(state, records),
    )
    verify_checkpoint(old)
    path = tmp_path / "old" / "records.jsonl"
    with ReptileMetaRL.load(old, outer_steps=3) as resumed:
        totals = resumed.step_totals
        assert totals.outer_steps == 2 and totals.env_steps == sum(r["env_steps"] for r in records)
        assert [r.outer_step for r in resumed.step_records] == [1, 2]
        resumed.learn(reset_num_timesteps=False, step_records_path=path)
        assert resumed.step_totals.outer_steps == 3
        assert [s.first_outer_step for s in resumed.step_totals.sessions] == [1, 3]
    # the old records become the new file's first lines
    assert steps_in(path) == [1, 2, 3]
    assert lines(path)[0]["tasks"] == records[0]["tasks"]


def test_summary_node_counts_describe_the_resumed_runs_cluster(tmp_path: Path) -> None:
    with ReptileMetaRL(**tiny(outer_steps=2, task_batch_size=2)) as meta:
        meta.learn(save_path=str(tmp_path / "ck"))
        here = next(iter(meta.step_totals.tasks_per_node))

    def other_cluster(state: dict[str, Any]) -> dict[str, Any]:
        # the first run ran on another Ray instance: its node id is another one
        (session,) = state["step_totals"]["sessions"]
        session["tasks_per_node"] = {"first-ray-instance-node": 4}
        return state

    ckpt = rewrite_state(
        tmp_path / "ck" / "meta_ckpt_outer_2", tmp_path / "m_outer_2", other_cluster
    )
    with ReptileMetaRL.load(ckpt, outer_steps=3) as resumed:
        resumed.learn(reset_num_timesteps=False)
        summary = run_summary(resumed.step_totals, 1.0)
    assert summary["outer_steps"] == 3 and summary["tasks"] == 6
    assert summary["tasks_per_node"] == {here: 2} and summary["num_nodes"] == 1
    assert summary["sessions"] == [
        {
            "first_outer_step": 1,
            "outer_steps": 2,
            "num_nodes": 1,
            "tasks_per_node": {"first-ray-instance-node": 4},
        },
        {"first_outer_step": 3, "outer_steps": 1, "num_nodes": 1, "tasks_per_node": {here: 2}},
    ]


def test_totals_round_trip_and_sessions() -> None:
    record = StepRecord(
        outer_step=1,
        env_steps=10,
        tasks=[{}, {}],
        tasks_per_node={"a": 2},
        step_seconds=0.5,
        ep_return_mean=-3.0,
    )
    totals = StepTotals()
    assert totals.current is None
    totals.add(record)
    assert totals.current is not None and totals.current.tasks_per_node == {"a": 2}
    back = StepTotals.from_dict(json.loads(json.dumps(totals.to_dict())))
    assert back.current is None  # a restored session is over
    assert back.to_dict() == totals.to_dict()
    back.add(StepRecord(outer_step=2, env_steps=5, tasks=[{}], tasks_per_node={"b": 1}))
    assert back.outer_steps == 2 and back.env_steps == 15 and back.tasks == 3
    assert [s.tasks_per_node for s in back.sessions] == [{"a": 2}, {"b": 1}]
    assert back.tasks_per_node == {"a": 2, "b": 1}
    # whole records (as old callers pass them) count as one, current, session
    summary = run_summary([record.to_dict()], 2.0)
    assert summary["outer_steps"] == 1 and summary["tasks_per_node"] == {"a": 2}


def test_to_jsonable_gives_strict_json_values() -> None:
    import dataclasses
    import math
    from pathlib import Path

    import numpy as np

    from distributed_reptile.jsonutil import dumps, to_jsonable

    @dataclasses.dataclass
    class Point:
        x: float
        tags: tuple[str, ...]

    value = {
        1: math.nan, "inf": -math.inf, "f": 0.25, "b": True, "n": None, "s": "x",
        "np": np.float32(1.5), "np_nan": np.float64("nan"), "arr": np.arange(3),
        "zero_d": np.array(7), "set": {3, 1}, "path": Path("/tmp/a"), "fn": dumps,
        "point": Point(math.inf, ("a",)), "nested": [{"k": (np.int64(2), math.nan)}],
    }  # fmt: skip
    assert to_jsonable(value) == {
        "1": None, "inf": None, "f": 0.25, "b": True, "n": None, "s": "x", "np": 1.5,
        "np_nan": None, "arr": [0, 1, 2], "zero_d": 7, "set": [1, 3], "path": "/tmp/a",
        "fn": "distributed_reptile.jsonutil:dumps", "point": {"x": None, "tags": ["a"]}, "nested": [{"k": [2, None]}],
    }  # fmt: skip
    assert type(to_jsonable(True)) is bool and type(to_jsonable(np.bool_(True))) is bool
    assert "NaN" not in dumps(value)
