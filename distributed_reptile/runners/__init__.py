"""Backends that run inner loops: in-process (serial) or on Ray actors."""

from distributed_reptile.runners.base import Runner, TaskFailedError
from distributed_reptile.runners.serial import SerialRunner

__all__ = ["Runner", "SerialRunner", "TaskFailedError"]
