"""One JSON policy for everything the package writes: strict JSON, NaN and infinities as ``null``.

:func:`to_jsonable` turns a value into plain JSON values, recursively:

- mappings become objects with string keys (``str(key)``); dataclass instances become objects of
  their fields;
- lists, tuples and sets become arrays (a set's items in a stable order);
- ``bool``, ``int``, ``str`` and ``None`` stay as they are; a float stays unless it is NaN or
  infinite, which becomes ``None`` (strict JSON has no NaN);
- numpy scalars and 0-d arrays become their Python value (``.item()``), numpy arrays nested lists
  (``.tolist()``), and so does anything else with a ``tolist()`` method (torch tensors);
- paths become strings; classes and functions become ``"module:qualname"``, the import path
  :func:`distributed_reptile.imports.resolve_import_path` reads back;
- any other object becomes its ``repr``.

:func:`dumps` and :func:`write_json` write the result with ``allow_nan=False``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """``value`` as plain, strict-JSON values (see the module docstring)."""
    kind = type(value)  # the common exact types first: a step record holds thousands of them
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict or isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [to_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return to_jsonable(value.item())
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return to_jsonable(os.fspath(value))
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}:{value.__qualname__}"
    if callable(getattr(value, "tolist", None)):
        return to_jsonable(value.tolist())
    return repr(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps(to_jsonable(value), allow_nan=False, **kwargs)``."""
    return json.dumps(to_jsonable(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike[str], value: Any, indent: int = 2) -> Path:
    """Write :func:`dumps` (``value``) and a newline to ``path`` (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(value, indent=indent) + "\n", encoding="utf-8")
    return out


__all__ = ["dumps", "to_jsonable", "write_json"]
