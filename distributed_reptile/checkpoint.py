"""Checkpoints: written atomically, verified on load, weights loaded without unpickling code.

A checkpoint is a folder::

    meta_policy.safetensors   meta policy state dict (safetensors)
    meta_optimizer.pt         meta-optimizer state (``torch.load(weights_only=True)``), if any
    task_source.pkl           task generator state: RNG, history, counters
    config.pkl                the trainer's constructor arguments (cloudpickle), when picklable
    trainer_state.json        progress, seed, schedule position, step totals (not the step
                              records: those are in the step-records file it names), versions
    meta_algo.zip             the meta model as an SB3 ``.save()`` zip, for interop
    MANIFEST.json             size and sha256 of every file above, written last

It is built in a temporary folder beside its final place and renamed into place, so a crash
leaves either the previous checkpoint or the new one, never half of one. When the disk fills
while it is written, the temporary folder is removed, the checkpoints already there are left as
they were, and :class:`DiskFullError` says where and how much room is left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from distributed_reptile.imports import resolve_import_path

T = TypeVar("T")

MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


class DiskFullError(CheckpointError):
    """The disk (or the user's quota) filled while a checkpoint or a step-records file was
    written. A partial checkpoint is removed: the checkpoints already there are intact.

    :param path: the file or folder being written.
    :param free_bytes: bytes free on its file system after the partial write was removed.
    """

    def __init__(
        self, message: str, path: Path | None = None, free_bytes: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.free_bytes = free_bytes


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = re.compile(
    rf"No space left on device|Disk quota exceeded|os error ({errno.ENOSPC}|{errno.EDQUOT})\b"
)
#: Free bytes under which a write that failed without saying why (torch.save's "unexpected
#: pos") is taken for a full disk.
LOW_SPACE_BYTES = 1 << 20


def free_bytes(path: Path) -> int | None:
    """Bytes free on the file system of ``path`` (or of its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _says_disk_full(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if _DISK_FULL_TEXT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(
    exc: BaseException,
    path: Path,
    doing: str,
    free_before: int | None = None,
    kept: str = "the partial checkpoint was removed and earlier checkpoints are intact",
) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``exc`` when it comes from a full disk, else ``None``.

    :param exc: the error the write raised.
    :param path: what was being written.
    :param doing: what was being done, for the message (``"writing checkpoint"``).
    :param free_before: bytes free when the write failed (before clean-up); a failure that says
        no errno counts as a full disk when this is under :data:`LOW_SPACE_BYTES`.
    :param kept: what became of the partial write, for the message.
    """
    if isinstance(exc, DiskFullError):
        return exc
    low = free_before is not None and free_before < LOW_SPACE_BYTES
    if not (_says_disk_full(exc) or (low and isinstance(exc, Exception))):
        return None
    free = free_bytes(path)
    room = f"{free} bytes free there now" if free is not None else "free space unknown"
    return DiskFullError(
        f"The disk is full (No space left on device) while {doing} {path} ({room}; "
        f"{type(exc).__name__}: {exc}). The run stopped; {kept}. Free some space (or point "
        "save_path elsewhere) and resume from the last checkpoint.",
        path,
        free,
    )


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
    """Call ``write_files(tmp_dir)``, add the manifest, then move the folder to ``final_dir`` atomically.

    :raises DiskFullError: the disk filled while writing (the temporary folder is removed, and a
        checkpoint already at ``final_dir`` is put back).
    """
    final = Path(final_dir)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
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
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        free_before = free_bytes(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(exc, final, "writing checkpoint", free_before)
        if full is not None and full is not exc:
            raise full from exc
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


# ---------------------------------------------------------------------- a trainer's checkpoint
STATE_FILE = "trainer_state.json"


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and of the libraries a checkpoint depends on, and of the distributions
    ``extra`` (e.g. ``("mujoco", "metaworld")``)."""
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    names = ("distributed-reptile", "torch", "stable-baselines3", "gymnasium", "ray", "numpy")
    for name in (*names, *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_trainer_files(folder: Path, trainer: Any) -> None:
    """Write the files of a trainer's checkpoint (see the module docstring) into ``folder``.

    ``trainer`` is a :class:`~distributed_reptile.BaseMetaAlgorithm`; what it adds to the
    progress record comes from its ``checkpoint_state()``.
    """
    import warnings

    import cloudpickle
    import torch as th
    from safetensors.torch import save_file

    from distributed_reptile.jsonutil import to_jsonable

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in trainer.meta_policy.state_dict().items()},
        str(folder / "meta_policy.safetensors"),
    )
    if trainer.meta_optimizer is not None:
        th.save(trainer.meta_optimizer.state_dict(), folder / "meta_optimizer.pt")
    with open(folder / "task_source.pkl", "wb") as fh:
        cloudpickle.dump(trainer.task_source.state_dict(), fh)
    try:
        config = cloudpickle.dumps(trainer.init_kwargs)
    except Exception as exc:  # unpicklable user objects: load() then needs them passed again
        warnings.warn(
            f"Trainer arguments could not be pickled ({exc}); pass them to load().",
            stacklevel=4,
        )
    else:
        (folder / "config.pkl").write_bytes(config)
    state = {
        "format_version": FORMAT_VERSION,
        "config": trainer.init_kwargs,
        "versions": library_versions(),
        **trainer.checkpoint_state(),
    }
    records_file = state.get("step_records_file")
    if isinstance(records_file, str):  # found again when the run folder has moved
        state["step_records_file_relative"] = os.path.relpath(records_file, folder.parent)
    (folder / STATE_FILE).write_text(
        json.dumps(to_jsonable(state), indent=2, sort_keys=True, allow_nan=False),
        encoding="utf-8",
    )
    trainer.meta_algo.save(folder / "meta_algo.zip")


def read_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified checkpoint's progress record (``trainer_state.json``)."""
    folder = Path(path)
    verify_checkpoint(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Checkpoint {folder}: {STATE_FILE} is unreadable ({exc}).") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {folder}: {STATE_FILE} is not a JSON object.")
    return state


def read_trainer_kwargs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The constructor arguments stored with the checkpoint (empty when they were not picklable)."""
    import pickle

    file = Path(path) / "config.pkl"
    if not file.exists():
        return {}
    try:
        kwargs = pickle.loads(file.read_bytes())
    except Exception as exc:
        raise CheckpointError(
            f"Checkpoint {path}: config.pkl cannot be read here ({type(exc).__name__}: {exc}). "
            "Install the code the run used (task callables, classes), or pass the trainer's "
            "arguments to load()."
        ) from exc
    return dict(kwargs)


def restore_trainer_files(folder: Path, trainer: Any) -> None:
    """Load the meta weights, meta-optimizer state and task-source state of ``folder`` into
    ``trainer`` (the progress record is restored by the trainer itself)."""
    import pickle

    import torch as th
    from safetensors.torch import load_file

    trainer.meta_policy.load_state_dict(load_file(str(folder / "meta_policy.safetensors")))
    opt_path = folder / "meta_optimizer.pt"
    if trainer.meta_optimizer is not None:
        if not opt_path.exists():
            raise CheckpointError(
                f"{folder} has no meta-optimizer state but use_meta_optimizer=True."
            )
        trainer.meta_optimizer.load_state_dict(th.load(opt_path, weights_only=True))
    with open(folder / "task_source.pkl", "rb") as fh:
        trainer.task_source.load_state_dict(pickle.load(fh))


def recorded_class(state: dict[str, Any], base: type[T], folder: Path | None = None) -> type[T]:
    """The trainer class a checkpoint records, which must be ``base`` or a subclass of it.

    :raises CheckpointError: when it cannot be imported here, or is not a ``base``.
    """
    where = f"Checkpoint {folder}" if folder is not None else "The checkpoint"
    recorded = state.get("algorithm_class")
    if not isinstance(recorded, str) or ":" not in recorded:
        # written before classes were recorded by import path: only the class name is known
        if recorded in (None, base.__name__) or any(c.__name__ == recorded for c in base.__mro__):
            return base
        raise CheckpointError(
            f"{where} was written by {recorded}, not {base.__name__}: load it with {recorded}.load()."
        )
    try:
        trainer_cls = resolve_import_path(recorded)
    except ValueError as exc:
        raise CheckpointError(
            f"{where} was written by the trainer class {recorded!r}, which cannot be imported "
            f"here ({exc}). Install the package that defines it (or put it on PYTHONPATH)."
        ) from None
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, base)):
        raise CheckpointError(
            f"{where} was written by {recorded}, which is not a {base.__name__}: load it with "
            f"distributed_reptile.load_trainer() or {getattr(trainer_cls, '__name__', recorded)}.load()."
        )
    return trainer_cls


def load_trainer(path: str | os.PathLike[str], base: type[T], overrides: dict[str, Any]) -> T:
    """The trainer a checkpoint holds, of the class it records (``base`` or a subclass of it),
    built from the stored arguments with ``overrides`` applied, with its state restored."""
    folder = Path(path)
    state = read_trainer_state(folder)
    trainer_cls: Any = recorded_class(state, base, folder)
    kwargs = read_trainer_kwargs(folder)
    kwargs.update(overrides)
    kwargs["seed"] = state["seed"]
    trainer = trainer_cls(**kwargs)
    try:
        trainer.load_checkpoint_state(folder, state)
        if "outer_steps" in overrides:  # checked by the constructor
            trainer.outer_steps = int(overrides["outer_steps"])
    except BaseException:
        trainer.close()
        raise
    return trainer  # type: ignore[no-any-return]
