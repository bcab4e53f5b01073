"""The ``distributed-reptile`` command: demo, train (run folder, resume, bad configs), dispatch."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distributed_reptile import cli
from distributed_reptile.cli import DISPATCHED, build_parser, main, run_module_cli
from distributed_reptile.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
SERIAL = ["--set", "backend=serial", "--set", "verbose=0"]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "meta_policy.safetensors"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """One serial smoke run with the default run folder (runs/<name>_<timestamp> in the cwd)."""
    cwd = tmp_path_factory.mktemp("cwd")
    here = Path.cwd()
    try:
        os.chdir(cwd)
        rc = main(["train", SMOKE, *SERIAL, "--set", "learn.keep_last=null"])
    finally:
        os.chdir(here)
    runs = list((cwd / "runs").iterdir())
    assert len(runs) == 1
    return runs[0], rc, runs[0].name


def test_demo_still_runs_and_prints_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.outer_steps, args.task_batch_size, args.inner_steps, args.num_workers) == (
        10,
        4,
        1024,
        2,
    )
    assert args.backend == "ray" and args.seed == 0
    rc = main(
        [
            "demo",
            "--backend",
            "serial",
            "--outer-steps",
            "1",
            "--task-batch-size",
            "1",
            "--inner-steps",
            "64",
            "--no-progress-bar",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n") :])
    assert summary["outer_steps"] == 1 and summary["env_steps"] >= 64


def test_train_writes_a_complete_run_folder(smoke_run: tuple[Path, int, str]) -> None:
    out, rc, name = smoke_run
    assert rc == 0
    assert name.startswith("smoke_") and len(name) == len("smoke_YYYYmmdd_HHMMSS")
    # the resolved config loads again and names the seed the run used
    resolved = load_config(out / "config.yaml")
    assert resolved.seed == 0 and resolved.backend == "serial" and resolved.learn.keep_last is None
    records = [json.loads(line) for line in (out / "step_records.jsonl").read_text().splitlines()]
    assert [r["outer_step"] for r in records] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outer_steps"] == 3 and summary["completed"] is True
    assert summary["env_steps"] == sum(r["env_steps"] for r in records)
    counted: dict[str, int] = {}
    for r in records:
        for node, n in r["tasks_per_node"].items():
            counted[node] = counted.get(node, 0) + n
    assert summary["tasks_per_node"] == counted and sum(counted.values()) == 3 * 4
    assert summary["final_mean_return"] == pytest.approx(records[-1]["ep_return_mean"])
    assert summary["wall_seconds"] > 0
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["meta_ckpt_outer_1", "meta_ckpt_outer_2", "meta_ckpt_outer_3"]
    assert summary["last_checkpoint"] == str(out.resolve() / "checkpoints" / "meta_ckpt_outer_3")
    event_files = list((out / "tb").rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file in <run>/tb"


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(
    smoke_run: tuple[Path, int, str], tmp_path: Path
) -> None:
    first, _, _ = smoke_run
    out = tmp_path / "resumed"
    rc = main(
        [
            "train",
            str(first / "config.yaml"),
            "--resume",
            str(first / "checkpoints" / "meta_ckpt_outer_1"),
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("meta_ckpt_outer_1")
    # the whole run's totals: step 1 from the checkpoint, steps 2 and 3 from this command
    assert summary["outer_steps"] == 3 and summary["tasks"] == 12
    # the node counts are this command's (its own cluster): steps 2 and 3
    assert sum(summary["tasks_per_node"].values()) == 8 and summary["num_nodes"] == 1
    assert [(s["first_outer_step"], s["outer_steps"]) for s in summary["sessions"]] == [
        (1, 1),
        (2, 2),
    ]
    # the new run folder's file starts with the first run's line of step 1
    records = [json.loads(line) for line in (out / "step_records.jsonl").read_text().splitlines()]
    assert [r["outer_step"] for r in records] == [1, 2, 3]
    a = _weights(first / "checkpoints" / "meta_ckpt_outer_3")
    b = _weights(out / "checkpoints" / "meta_ckpt_outer_3")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoints" / "meta_ckpt_outer_1").exists()


def test_set_overrides_reach_the_trainer_and_the_resolved_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            SMOKE,
            *SERIAL,
            "--set",
            "outer_steps=1",
            "--set",
            "task_batch_size=2",
            "--set",
            "learn.save_final=false",
            "--set",
            "learn.save_freq=0",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outer_steps"] == 1 and sum(summary["tasks_per_node"].values()) == 2
    assert summary["last_checkpoint"] is None
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["outer_steps"] == 1 and resolved["learn"]["save_final"] is False


def test_a_bad_config_exits_2_with_every_problem_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    config = yaml.safe_load(Path(SMOKE).read_text())
    config["tasks_generator_params"]["task_callable"] = "my_pkg.tasks:make_env"
    config["num_worker"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    was_running = ray.is_initialized()
    assert main(["train", str(path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"invalid run config in {path} (2 problem(s))" in err
    assert "tasks_generator_params.task_callable: cannot import 'my_pkg.tasks:make_env'" in err
    assert "num_worker: unknown key: did you mean 'num_workers'?" in err
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "run").exists()


def test_resume_from_a_missing_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", SMOKE, *SERIAL, "--resume", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


# ---------------------------------------------------------------------- dispatch
def test_run_module_cli_passes_argv_through_and_returns_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dr_echo_cli.py").write_text(
        "import json, sys\ndef cli_main(argv):\n    print(json.dumps(argv))\n    return 3\n"
    )
    (tmp_path / "dr_no_cli.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_module_cli("dr_echo_cli", ["--help", "-x", "pos"]) == 3
    assert run_module_cli("dr_no_cli", []) == 2
    assert run_module_cli("dr_not_a_module_anywhere", [], "evaluate") == 2


def test_missing_subcommand_module_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_module_cli("distributed_reptile.not_there", ["x"], "bench") == 2
    err = capsys.readouterr().err
    assert (
        "distributed-reptile bench: not available: cannot import distributed_reptile.not_there"
        in err
    )


@pytest.mark.parametrize("command", sorted(DISPATCHED))
def test_evaluate_bench_tune_dispatch_to_their_module(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the module exists its cli_main gets the arguments (leading options included);
    where it does not (yet), the command exits 2 naming the module."""
    module_name = DISPATCHED[command][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    if module is None or not callable(getattr(module, "cli_main", None)):
        assert main([command, "--anything"]) == 2
        assert f"distributed-reptile {command}: not available" in capsys.readouterr().err
        return
    seen: list[Any] = []

    def record(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    monkeypatch.setattr(module, "cli_main", record)
    assert main([command, "--help", "-k", "v", "pos"]) == 0
    assert main([command]) == 0
    assert seen == [["--help", "-k", "v", "pos"], []]


def test_the_parser_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "train", *DISPATCHED):
        assert command in text


def test_console_script_points_at_main() -> None:
    from importlib.metadata import entry_points

    (script,) = [
        e for e in entry_points(group="console_scripts") if e.name == "distributed-reptile"
    ]
    assert script.value == "distributed_reptile.cli:main"
    assert cli.main is main and sys.modules["distributed_reptile.cli"] is cli


def test_time_budget_stops_the_run_cleanly_with_a_final_checkpoint(tmp_path: Path) -> None:
    from distributed_reptile.cli import main

    out = tmp_path / "run"
    status = main(
        [
            "train",
            "configs/smoke.yaml",
            "--set",
            "backend=serial",
            "--set",
            "outer_steps=5",
            "--time-budget",
            "0.001",
            "--output",
            str(out),
        ]
    )
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is False and summary["outer_steps"] == 1
    assert summary["last_checkpoint"].endswith("meta_ckpt_outer_1")


def test_time_budget_config_key_becomes_a_wall_clock_callback(tmp_path: Path) -> None:
    from distributed_reptile.callbacks import StopOnWallClock
    from distributed_reptile.config import load_config

    config = load_config("configs/smoke.yaml", ["learn.time_budget_s=90"])
    callbacks = config.learn_kwargs()["callback"]
    assert isinstance(callbacks[0], StopOnWallClock) and callbacks[0].seconds == 90.0
