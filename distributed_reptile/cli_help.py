"""What every command line of the project shares: help that shows defaults, hidden aliases of
renamed options, ``--debug``, and one way of reporting a user's mistake (one line, exit 2)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

#: Exit status for a user's mistake (a wrong config, path or setting), as argparse uses.
EXIT_USAGE = 2
#: Exit status after Ctrl-C, as shells report a process stopped by SIGINT.
EXIT_INTERRUPTED = 130
#: Set (to anything but "" or "0") to show tracebacks instead of one-line messages.
DEBUG_ENV = "DISTRIBUTED_REPTILE_DEBUG"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (they hold examples); each option's default appended
    to its help, unless it has none worth showing (``None``, ``False``, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default is argparse.SUPPRESS
            or default is None
            or default is False
            or default == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def new_parser(prog: str, description: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser with the project's help format: ``description`` and an ``example`` epilog."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
        **kwargs,
    )


def add_output_option(
    parser: argparse.ArgumentParser,
    help_text: str,
    default: str | None = None,
    old_names: tuple[str, ...] = (),
    dest: str = "output",
) -> None:
    """The output folder option, ``--output`` in every command; ``old_names`` (earlier names of
    the same option) still work, unlisted in the help."""
    parser.add_argument("--output", dest=dest, default=default, metavar="DIR", help=help_text)
    for name in old_names:
        parser.add_argument(name, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def new_folder(root: str, name: str, now: datetime | None = None) -> Path:
    """``<root>/<name>_<YYYYmmdd_HHMMSS>`` relative to the working directory, with ``_2``,
    ``_3``... appended when that folder exists already (two runs started in the same second)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    base = Path(root) / f"{name}_{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}_{n}")
    return path


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
    )


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """Whether ``--debug`` was given (to this command or the top-level one) or ``DEBUG_ENV`` set."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_error(command: str, message: object) -> int:
    """Report a user's mistake in one line on stderr; returns :data:`EXIT_USAGE`."""
    text = " ".join(str(message).split("\n")) if "\n" in str(message) else str(message)
    print(f"distributed-reptile {command}: {text}", file=sys.stderr)
    return EXIT_USAGE


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean a user's mistake or an unusable environment, not a bug:
    reported in one line (exit 2) unless ``--debug``."""
    from distributed_reptile.checkpoint import CheckpointError
    from distributed_reptile.config import ConfigError
    from distributed_reptile.execution.resources import InsufficientResourcesError
    from distributed_reptile.ray_pending import WorkersNotStartedError
    from distributed_reptile.ray_utils import RayConnectionError

    return (
        CheckpointError,
        ConfigError,
        InsufficientResourcesError,
        RayConnectionError,
        WorkersNotStartedError,
    )


__all__ = [
    "DEBUG_ENV",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "HelpFormatter",
    "add_debug_option",
    "add_output_option",
    "debug_enabled",
    "new_folder",
    "new_parser",
    "user_error",
    "user_errors",
]
