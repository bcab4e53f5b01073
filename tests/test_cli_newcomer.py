"""The command line as a newcomer meets it: no silent hang, no traceback for a user's mistake,
nothing left behind, nothing written over (real CLI; subprocesses where the process matters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from distributed_reptile.cli import default_output_dir, main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
EXE = str(Path(sys.executable).with_name("distributed-reptile"))
SERIAL = ["--set", "backend=serial", "--set", "verbose=0"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("DISTRIBUTED_REPTILE_DEBUG", None)
    return env


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def test_a_run_folder_that_holds_files_is_never_written_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", SMOKE, *SERIAL, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not an empty folder" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["demo", "--backend", "serial", "--output", str(out)]) == 2


def test_default_run_folders_are_new_even_within_one_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    now = datetime(2026, 1, 2, 3, 4, 5)
    first = default_output_dir("smoke", now)
    first.mkdir(parents=True)
    second = default_output_dir("smoke", now)
    assert second != first and second.name == f"{first.name}_2"


def test_resume_says_what_is_done_and_what_is_left(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["train", SMOKE, *SERIAL, "--set", "outer_steps=2", "--output", str(first)]) == 0
    capsys.readouterr()
    ckpt = first / "checkpoints" / "meta_ckpt_outer_2"
    again = tmp_path / "again"
    rc = main(
        [
            "train",
            SMOKE,
            *SERIAL,
            "--set",
            "outer_steps=3",
            "--resume",
            str(ckpt),
            "--output",
            str(again),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"resuming {ckpt} at outer step 2 of 3: 1 outer steps to run" in out


def test_bad_evaluation_settings_are_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    import distributed_reptile.algorithms.base as base

    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded (and Ray started) before the check")

    monkeypatch.setattr(base, "load_trainer", must_not_load)
    out = tmp_path / "e"
    cases = {
        ("--tasks", "0"): "--tasks must be at least 1",
        ("--episodes", "0"): "--episodes must be at least 1",
        ("--budgets", "-1"): "--budgets must be >= 0",
        ("--baseline", str(tmp_path / "missing.zip")): "no such file",
    }
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for extra, message in cases.items():
        rc = main(["evaluate", str(tmp_path / "nowhere"), *extra, "--output", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert main(["evaluate", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreachable_cluster_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["train", SMOKE, "--set", "ray_address=127.0.0.1:1", "--set", "connect_timeout_s=2"]
    proc = _cli(*args, "--output", str(out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distributed-reptile train:"), proc.stderr
    assert "127.0.0.1:1" in err[0] and "Traceback" not in proc.stderr
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in proc.stderr
    assert not out.exists()
    # --debug shows the traceback behind the same error
    debug = _cli("--debug", *args, "--output", str(out))
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not out.exists()


def _as_in_a_terminal() -> None:
    """SIGINT handled by default in the child, as in a terminal: a test session started in the
    background (``cmd &`` in a script, ``nohup``) ignores SIGINT, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_names_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [EXE, "train", SMOKE, "--set", "outer_steps=200", "--set", "num_workers=1"]
    proc = subprocess.Popen(
        [*cmd, "--output", str(out)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("meta_ckpt_outer_*")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    line = [s for s in stderr.splitlines() if s.startswith("distributed-reptile train:")]
    assert len(line) == 1 and "interrupted after" in line[0], stderr[-3000:]
    assert "--resume" in line[0] and str(out / "checkpoints" / "meta_ckpt_outer_") in line[0]
    assert (out / "summary.json").exists() and (out / "step_records.jsonl").exists()


def test_pending_workers_are_reported_and_the_wait_is_bounded(ray_session):
    """A cluster that has the resources in all, but not free (another job holds them): the wait
    says what is pending every few seconds and gives up with what is missing."""
    import ray

    from distributed_reptile.ray_pending import WorkersNotStartedError, wait_ready

    @ray.remote(resources={"learner_slot": 4}, num_cpus=0)
    class Holder:
        def ping(self) -> bool:
            return True

    @ray.remote(resources={"learner_slot": 1}, num_cpus=0)
    class Worker:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ping.remote())
    worker = Worker.remote()
    lines: list[str] = []
    try:
        with pytest.raises(WorkersNotStartedError) as info:
            wait_ready([worker.ready.remote()], {"learner_slot": 1.0}, 3.0, lines.append, 1.0)
        assert lines and "1 of 1 workers have not answered after" in lines[0]
        assert "learner_slot" in lines[0] and "free" in lines[0]
        assert "worker_start_timeout_s=3" in str(info.value)
        # the holder goes: the same wait now ends with the worker ready
        ray.kill(holder)
        assert wait_ready([worker.ready.remote()], {"learner_slot": 1.0}, 60.0) == [True]
    finally:
        ray.kill(worker)
        ray.kill(holder)


def test_num_workers_auto_is_what_the_cluster_holds(ray_session, capsys):
    from distributed_reptile.execution.ray_backend import RayBackend
    from distributed_reptile.settings import ExecutionSettings

    backend = RayBackend(ExecutionSettings(num_workers="auto"))
    cpus = int(ray_session.cluster_resources()["CPU"])
    assert backend.num_workers == cpus
    assert f"num_workers=auto -> {cpus}" in capsys.readouterr().out
    slots = RayBackend(
        ExecutionSettings(num_workers="auto", worker_resources={"num_cpus": 2})
    ).num_workers
    assert slots == cpus // 2


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_fits_a_two_core_machine(config: Path) -> None:
    """Each shipped config runs on the 2-core machine: ``num_workers: auto`` (one per CPU), or a
    pool that a 2-CPU local instance holds."""
    from distributed_reptile.config import load_config
    from distributed_reptile.execution.resources import check_pool_fits

    c = load_config(config)
    if c.num_workers != "auto":
        check_pool_fits(int(c.num_workers), c.worker_resources, {"CPU": 2.0})


def test_a_new_run_never_writes_among_an_earlier_runs_checkpoints(tmp_path):
    """The Quickstart run twice: the second run is refused before it trains (its checkpoints would
    mix with the first's, and the newest-numbered one could be the other run's)."""
    from conftest import cartpole_kwargs

    from distributed_reptile import ReptileMetaRL

    save = tmp_path / "cartpole"
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=2)) as meta:
        meta.learn(save_path=str(save), save_freq=1)
    before = sorted(p.name for p in save.iterdir())
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=1)) as meta:
        with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
            meta.learn(save_path=str(save), save_freq=1)
        assert meta.num_outer_steps == 0
    assert sorted(p.name for p in save.iterdir()) == before
    # continuing that run into the same folder is what it is for
    with ReptileMetaRL.load(save / "meta_ckpt_outer_2", outer_steps=3) as meta:
        meta.learn(save_path=str(save), save_freq=1, reset_num_timesteps=False)
        assert meta.num_outer_steps == 3
