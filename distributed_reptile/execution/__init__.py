"""Execution backends: where inner loops run, chosen by name and injected into the outer loop.

:func:`open_backend` builds the backend registered under a name (``"serial"``, ``"ray"``) from
:class:`~distributed_reptile.settings.ExecutionSettings`; the trainer, the evaluation and Tune
all get theirs here. Adding a backend is one module with a class shaped like
:class:`~distributed_reptile.execution.base.Backend` plus one line in
:data:`~distributed_reptile.execution.registry.BACKENDS` (or a call to
:func:`register_backend`). :func:`raise_if_interrupted` tells the outer loop which errors mean a
lost process (a dead actor, node or Ray itself), to end the run saying how to resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distributed_reptile.execution.failures import raise_if_interrupted
from distributed_reptile.execution.registry import BACKENDS, backend_names, register_backend
from distributed_reptile.imports import resolve_import_path

if TYPE_CHECKING:
    from distributed_reptile.execution.base import Backend
    from distributed_reptile.settings import ExecutionSettings


def open_backend(name: str, settings: ExecutionSettings | None = None) -> Backend:
    """The backend registered as ``name``, opened with ``settings`` (defaults when ``None``)."""
    from distributed_reptile.settings import ExecutionSettings, check_backend

    check_backend(name)
    backend_cls = resolve_import_path(BACKENDS[name])
    return backend_cls(settings or ExecutionSettings())  # type: ignore[no-any-return]


__all__ = [
    "BACKENDS",
    "backend_names",
    "open_backend",
    "raise_if_interrupted",
    "register_backend",
]
