"""A full disk while checkpointing: the run stops with a DiskFullError that says where, the
partial checkpoint is removed, and the previous checkpoint still verifies and loads.

The disk is a 2 MiB tmpfs mounted in a private mount namespace (``unshare -m``), so these tests
run as root (or with CAP_SYS_ADMIN) and are skipped elsewhere. Each runs this file as a script
inside that namespace and checks the facts it prints.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve()
FILLER = "filler.bin"


def _mount_problem(folder: Path) -> str | None:
    """Why a tmpfs cannot be mounted in a private mount namespace here (``None``: it can)."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', str(folder)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}"
    return None


def run_on_small_tmpfs(tmp_path: Path, mode: str) -> dict[str, Any]:
    """Run ``mode`` of this file's script on a fresh 2 MiB tmpfs; the facts it printed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    problem = _mount_problem(mount)
    if problem:
        pytest.skip(problem)
    shell = 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$1" "$2" "$3" "$0"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell, str(mount), sys.executable, str(HERE), mode],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check(facts: dict[str, Any], disk: str) -> None:
    assert facts["error"] == "DiskFullError", facts
    message = facts["message"]
    assert "disk is full" in message and "No space left" in message
    assert facts["path"].startswith(disk) and facts["path"] in message
    assert facts["free_bytes"] is not None and f"{facts['free_bytes']} bytes free" in message
    assert facts["free_bytes"] < 1 << 20  # the 2 MiB disk is still (nearly) full
    assert facts["left_behind"] == [], "a temporary checkpoint folder was left behind"
    assert facts["checkpoints"] == ["meta_ckpt_outer_1"]
    assert facts["previous_verifies"] and facts["previous_loads_at_step"] == 1
    # with room again, the run resumes from the previous checkpoint and saves
    assert facts["resumed_to"] == ["meta_ckpt_outer_1", "meta_ckpt_outer_2"]
    assert facts["records_after_resume"] == [1, 2]


def test_disk_filling_during_the_checkpoint_write_keeps_the_previous_one(tmp_path):
    facts = run_on_small_tmpfs(tmp_path, "during")
    check(facts, str(tmp_path / "disk"))
    assert facts["path"].endswith("meta_ckpt_outer_2")  # the checkpoint being written
    assert facts["files_before_failure"], "the disk filled before the write began"


def test_disk_full_before_the_checkpoint_write_keeps_the_previous_one(tmp_path):
    facts = run_on_small_tmpfs(tmp_path, "before")
    check(facts, str(tmp_path / "disk"))


def test_disk_full_error_is_recognised_from_the_writers_own_errors(tmp_path):
    from distributed_reptile.checkpoint import DiskFullError, disk_full_error

    target = tmp_path / "ck"
    for exc in (
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
    ):
        err = disk_full_error(exc, target, "writing checkpoint")
        assert isinstance(err, DiskFullError) and str(target) in str(err)
    # torch.save says only "unexpected pos": a full disk when almost nothing is left
    opaque = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert disk_full_error(opaque, target, "writing checkpoint") is None
    assert disk_full_error(opaque, target, "writing checkpoint", free_before=4096) is not None
    assert disk_full_error(ValueError("bad"), target, "writing checkpoint") is None


def test_a_failed_write_over_an_existing_checkpoint_puts_it_back(tmp_path, monkeypatch):
    from distributed_reptile import checkpoint as ckpt

    def files(content: bytes):
        return lambda folder: (folder / "data.bin").write_bytes(content)

    final = ckpt.write_checkpoint(tmp_path / "m_outer_1", files(b"old"))
    rename = os.rename

    def rename_fails_into_place(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".m_outer_1.tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename_fails_into_place)
    with pytest.raises(ckpt.DiskFullError, match="disk is full") as info:
        ckpt.write_checkpoint(final, files(b"new"))
    assert info.value.path == final and str(final) in str(info.value)
    ckpt.verify_checkpoint(final)
    assert (final / "data.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m_outer_1"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_a_full_disk_while_writing_step_records_is_a_disk_full_error():
    from distributed_reptile.checkpoint import DiskFullError
    from distributed_reptile.records import StepRecord
    from distributed_reptile.step_history import StepHistory

    history = StepHistory()
    history.path = Path("/dev/full")  # every write to it fails with ENOSPC
    history.add(StepRecord(outer_step=1))
    with pytest.raises(DiskFullError, match="disk is full") as info:
        history.flush()
    assert "/dev/full" in str(info.value) and "dropped when the run resumes" in str(info.value)


# ---------------------------------------------------------------------- inside the namespace
def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` up, then give ``leave`` bytes back."""
    with open(disk / FILLER, "ab") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        if leave:
            fh.truncate(max(fh.tell() - leave, 0))


def facts_of_a_full_disk(disk: Path, mode: str) -> dict[str, Any]:
    from conftest import cartpole_kwargs

    from distributed_reptile import ReptileMetaRL
    from distributed_reptile.checkpoint import DiskFullError, verify_checkpoint

    kwargs = cartpole_kwargs(inner_steps=64, task_batch_size=1, outer_steps=1)
    ckpts = disk / "ck"
    facts: dict[str, Any] = {}
    with ReptileMetaRL(**kwargs) as meta:
        meta.learn(save_path=str(ckpts))
        if mode == "before":
            fill(disk, leave=8 << 10)
        else:  # fills the disk half-way through the checkpoint's files
            state_dict = meta.task_source.state_dict

            def fill_then_state_dict() -> Any:
                tmp = [p for p in ckpts.iterdir() if p.name.startswith(".")]
                facts["files_before_failure"] = sorted(f.name for t in tmp for f in t.iterdir())
                fill(disk)
                return state_dict()

            meta.task_source.state_dict = fill_then_state_dict  # type: ignore[method-assign]
        try:
            meta.learn(outer_steps=2, reset_num_timesteps=False, save_path=str(ckpts))
        except DiskFullError as err:
            facts.update(
                error=type(err).__name__,
                message=str(err),
                path=str(err.path),
                free_bytes=err.free_bytes,
            )
    facts["left_behind"] = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("."))
    facts["checkpoints"] = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    previous = ckpts / "meta_ckpt_outer_1"
    facts["previous_verifies"] = bool(verify_checkpoint(previous))
    with ReptileMetaRL.load(previous) as loaded:
        facts["previous_loads_at_step"] = loaded.num_outer_steps
    os.remove(disk / FILLER)
    with ReptileMetaRL.load(previous, outer_steps=2) as resumed:
        resumed.learn(reset_num_timesteps=False, save_path=str(ckpts))
    facts["resumed_to"] = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    records = (ckpts / "meta_ckpt_step_records.jsonl").read_text().splitlines()
    facts["records_after_resume"] = [json.loads(line)["outer_step"] for line in records]
    return facts


if __name__ == "__main__":
    mode, disk = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(facts_of_a_full_disk(disk, mode)))
