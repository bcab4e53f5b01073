"""Runs that cannot fit are refused at once, with what was asked, what exists and the fix."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distributed_reptile.execution.resources import (
    InsufficientResourcesError,
    check_fits,
    worker_bundle,
    workers_that_fit,
)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "distributed_reptile.cli"]


def test_worker_bundles_and_the_check():
    assert worker_bundle(None) == {"CPU": 1.0}
    assert worker_bundle({"num_cpus": 2, "num_gpus": 0.5, "scheduling_strategy": "SPREAD"}) == {
        "CPU": 2.0,
        "GPU": 0.5,
    }
    assert worker_bundle({"learner_slot": 1, "resources": {"x": 2}}) == {
        "CPU": 1.0,
        "learner_slot": 1.0,
        "x": 2.0,
    }
    assert workers_that_fit({"CPU": 1.0}, {"CPU": 2.0}) == 2
    check_fits([{"CPU": 1.0}] * 2, {"CPU": 2.0}, "two", "fix")
    with pytest.raises(
        InsufficientResourcesError, match=r"ask for 3 CPU; the Ray cluster has 2 CPU.*fix"
    ):
        check_fits([{"CPU": 1.0}] * 3, {"CPU": 2.0}, "three", "fix")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_a_train_run_larger_than_the_machine_exits_2_at_once(tmp_path):
    out = tmp_path / "run"
    cmd = [*CLI, "train", "configs/smoke.yaml", "--set", "num_workers=64", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(r"num_workers=64 workers of 1 CPU each ask for 64 CPU", proc.stderr)
    assert "--set num_workers=" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_sweep_whose_trial_cannot_fit_exits_2_at_once(tmp_path):
    out = tmp_path / "sweep"
    cmd = [
        *CLI,
        "tune",
        "configs/smoke.yaml",
        "--set",
        "num_workers=64",
        "--set",
        "search_space.meta_lr=loguniform(0.05, 1.0)",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Each trial" in proc.stderr and "--set num_workers=" in proc.stderr
    assert not out.exists()


def _readme_command(prefix: str) -> list[str]:
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(prefix):
            return shlex.split(line.split("  #", 1)[0])
    raise AssertionError(f"no README line starts with {prefix!r}")


@pytest.mark.slow
def test_the_readme_tune_command_runs_as_printed():
    cmd = _readme_command("distributed-reptile tune ")
    before = set((REPO / "runs").glob("tune_smoke_*")) if (REPO / "runs").exists() else set()
    exe = str(Path(sys.executable).with_name("distributed-reptile"))
    proc = subprocess.run(
        [exe, *cmd[1:]], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    made = set((REPO / "runs").glob("tune_smoke_*")) - before
    try:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "best trial checkpoint:" in proc.stdout
        assert proc.stdout.count("OK") == 2
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
