"""Checkpoints: written atomically, verified on load, weights loaded without unpickling code.

A checkpoint is a folder::

    meta_policy.safetensors   meta policy state dict (safetensors)
    meta_optimizer.pt         meta-optimizer state (``torch.load(weights_only=True)``), if any
    task_source.pkl           task generator state: RNG, history, counters
    config.pkl                the trainer's constructor arguments (cloudpickle), when picklable
    trainer_state.json        progress, seed, schedule position, step records, library versions
    meta_algo.zip             the meta model as an SB3 ``.save()`` zip, for interop
    MANIFEST.json             size and sha256 of every file above, written last

It is built in a temporary folder beside its final place and renamed into place, so a crash
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    final_dir: str | os.PathLike[str], write_files: Callable[[Path], None]
) -> Path:
    """Call ``write_files(tmp_dir)``, add the manifest, then move the folder to ``final_dir`` atomically."""
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_files(tmp)
        files = {}
        for path in sorted(tmp.iterdir()):
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {"format_version": FORMAT_VERSION, "files": files}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that every file of the manifest is there with its size and hash; return the manifest."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a checkpoint folder. Pass a folder written by save() or learn(save_path=...)."
        )
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(
            f"Checkpoint {folder} has no {MANIFEST}: it is incomplete (interrupted while written?). "
            "Resume from an earlier checkpoint."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"Checkpoint {folder}: {MANIFEST} is corrupted ({exc}).") from exc
    for name, meta in files.items():
        file = folder / name
        if not file.exists():
            raise CheckpointError(f"Checkpoint {folder} is incomplete: {name} is missing.")
        if file.stat().st_size != meta["bytes"] or _sha256(file) != meta["sha256"]:
            raise CheckpointError(
                f"Checkpoint {folder} is corrupted: {name} does not match its recorded size and sha256 "
                "(truncated or modified). Resume from an earlier checkpoint."
            )
    return manifest


_STEP_RE = re.compile(r"_outer_(\d+)$")


def list_checkpoints(folder: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Complete checkpoints named ``{prefix}_outer_{N}`` in ``folder``, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_RE.search(path.name)
        if (
            path.is_dir()
            and path.name.startswith(prefix + "_outer_")
            and match
            and (path / MANIFEST).exists()
        ):
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike[str], prefix: str) -> Path | None:
    found = list_checkpoints(folder, prefix)
    return found[-1] if found else None


def prune_checkpoints(folder: str | os.PathLike[str], prefix: str, keep_last: int | None) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (``None`` keeps all)."""
    if keep_last is None:
        return
    for old in list_checkpoints(folder, prefix)[
        : max(0, len(list_checkpoints(folder, prefix)) - keep_last)
    ]:
        shutil.rmtree(old, ignore_errors=True)
