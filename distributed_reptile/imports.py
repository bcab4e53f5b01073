"""Import paths: user code named as ``"package.module:name"`` in configs and checkpoints."""

from __future__ import annotations

import importlib
from typing import Any


def resolve_import_path(path: str) -> Any:
    """The object that ``"package.module:name"`` (``name`` may be dotted) refers to.

    :param path: the import path.
    :raises ValueError: with the cause and the fix when it does not resolve.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(
            f"{path!r} is not an import path: write it as 'package.module:name' "
            "(e.g. 'stable_baselines3:PPO')"
        )
    module_name, attr = path.split(":")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path: write it as 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r} ({exc}): check the module path") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"cannot import {path!r} (module {module_name!r} has no attribute {attr!r}): "
                "check the name after ':'"
            ) from None
    return obj


def import_path_of(obj: Any) -> str:
    """The ``"module:qualname"`` import path of a class or function."""
    return f"{obj.__module__}:{obj.__qualname__}"
