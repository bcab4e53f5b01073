"""A user's mistakes with checkpoints: one line, exit 2, no run folder left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from distributed_reptile.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
SERIAL = ["--set", "backend=serial", "--set", "verbose=0", "--set", "learn.keep_last=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["train", SMOKE, *SERIAL, "--output", str(out)]) == 0
    return out


def _train_resume(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["train", SMOKE, *SERIAL, *extra, "--resume", str(ckpt), "--output", str(out)])


def test_resuming_a_finished_run_names_the_setting_and_makes_no_folder(run, tmp_path, capsys):
    out = tmp_path / "again"
    assert _train_resume(run / "checkpoints" / "meta_ckpt_outer_3", out) == 2
    err = capsys.readouterr().err
    assert "already done 3 outer steps" in err and "--set outer_steps=6" in err
    assert not out.exists()


def test_a_run_folder_given_to_resume_names_its_last_checkpoint(run, tmp_path, capsys):
    assert _train_resume(run, tmp_path / "x", "--set", "outer_steps=5") == 2
    err = capsys.readouterr().err
    assert "run folder" in err and str(run / "checkpoints" / "meta_ckpt_outer_3") in err
    assert not (tmp_path / "x").exists()


def test_a_corrupted_checkpoint_names_the_intact_one(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", copy)
    weights = copy / "meta_ckpt_outer_3" / "meta_policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # the truncated checkpoint is still the newest complete-looking one; the message says what is wrong
    assert _train_resume(copy / "meta_ckpt_outer_3", tmp_path / "y", "--set", "outer_steps=5") == 2
    err = capsys.readouterr().err
    assert "corrupted: meta_policy.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()


def test_evaluate_on_a_folder_that_is_no_checkpoint_is_one_line(tmp_path, capsys):
    rc = main(["evaluate", str(tmp_path), "--backend", "serial", "--out", str(tmp_path / "e")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distributed-reptile evaluate:") and len(err.splitlines()) == 1


def test_evaluate_on_a_run_folder_names_its_last_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["evaluate", str(run), "--backend", "serial", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run folder" in err
    assert str(run / "checkpoints" / "meta_ckpt_outer_3") in err
    assert "interrupted" not in err and not out.exists()


def test_evaluate_on_a_corrupted_checkpoint_says_what_is_wrong(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", copy)
    manifest = copy / "meta_ckpt_outer_3" / "MANIFEST.json"
    manifest.write_text(manifest.read_text()[:20])
    assert main(["evaluate", str(copy / "meta_ckpt_outer_3"), "--backend", "serial"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MANIFEST.json" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adapt-lrs", "0.01", "0"], "--adapt-lrs must be finite numbers > 0"),
        (["--adapt-lrs", "0.01", "0.01"], "--adapt-lrs repeats a value"),
        (["--adapt-lrs", "0.01", "--budgets", "0"], "give a budget > 0"),
        (["--adapt-lrs", "0.01", "--select-tasks", "0"], "--select-tasks must be at least 1"),
    ],
)
def test_evaluate_refuses_bad_adaptation_steps_in_one_line(run, tmp_path, capsys, extra, message):
    out = tmp_path / "e"
    ckpt = str(run / "checkpoints" / "meta_ckpt_outer_3")
    assert main(["evaluate", ckpt, "--backend", "serial", "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not out.exists()
