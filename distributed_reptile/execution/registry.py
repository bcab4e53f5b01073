"""The names of the execution backends and where each is defined (imported only when opened)."""

from __future__ import annotations

#: backend name -> ``"module:Class"`` of its :class:`~distributed_reptile.execution.base.Backend`.
BACKENDS: dict[str, str] = {
    "serial": "distributed_reptile.execution.serial:SerialBackend",
    "ray": "distributed_reptile.execution.ray_backend:RayBackend",
}

#: The backend a trainer uses when none is named.
DEFAULT_BACKEND = "ray"


def register_backend(name: str, import_path: str) -> None:
    """Make ``backend=name`` build the backend class at ``import_path`` (``"module:Class"``)."""
    if ":" not in import_path:
        raise ValueError(f"import_path must read 'package.module:Class', got {import_path!r}.")
    BACKENDS[name] = import_path


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)
