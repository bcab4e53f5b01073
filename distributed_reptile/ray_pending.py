"""Waiting for actors that Ray has not placed yet: say what is pending and why every so often, and
give up after a bounded wait instead of hanging without a word."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: Seconds between two "still pending" messages.
REPORT_EVERY_S = 15.0


class WorkersNotStartedError(RuntimeError):
    """Workers stayed pending (no node could place them) for longer than the allowed wait."""


def _resources(values: Mapping[str, float]) -> str:
    shown = {
        k: v for k, v in values.items() if not k.startswith(("node:", "memory", "object_store"))
    }
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "nothing"


def pending_message(pending: int, total: int, waited_s: float, bundle: Mapping[str, float]) -> str:
    """What is pending, for how long, and what the cluster has (in all and free now)."""
    import ray

    asked = _resources(bundle)
    return (
        f"{pending} of {total} workers have not answered after {waited_s:.0f} s (still starting, "
        f"or waiting for a node with room): each asks for {asked}; the Ray cluster has "
        f"{_resources(ray.cluster_resources())} in all, {_resources(ray.available_resources())} "
        "free."
    )


def wait_ready(
    refs: Sequence[Any],
    bundle: Mapping[str, float],
    timeout_s: float | None,
    report: Callable[[str], None] | None = None,
    report_every_s: float = REPORT_EVERY_S,
) -> list[Any]:
    """``ray.get(refs)`` (the workers' ``ready()`` calls), saying every ``report_every_s`` seconds
    which are still pending and why, and raising :class:`WorkersNotStartedError` after
    ``timeout_s`` (``None``: wait as long as it takes, still reporting).

    :param refs: one ``ready()`` call per worker.
    :param bundle: what one worker asks for (for the message).
    :param timeout_s: the longest wait in seconds.
    :param report: where the messages go (default: one line on stderr).
    """
    import ray

    report = report or (
        lambda line: print(f"distributed_reptile: {line}", file=sys.stderr, flush=True)
    )
    start = time.monotonic()
    remaining = list(refs)
    next_report = start + report_every_s
    while remaining:
        now = time.monotonic()
        waits = [next_report - now]
        if timeout_s is not None:
            waits.append(start + timeout_s - now)
        ready, remaining = ray.wait(
            remaining, num_returns=len(remaining), timeout=max(0.0, min(waits))
        )
        if not remaining:
            break
        now = time.monotonic()
        if timeout_s is not None and now - start >= timeout_s:
            raise WorkersNotStartedError(
                pending_message(len(remaining), len(refs), now - start, bundle)
                + f" Gave up after worker_start_timeout_s={timeout_s:g}: lower num_workers or "
                "worker_resources to what the cluster can place, free the resources other jobs "
                "hold, or allow a cluster that is still growing more time "
                "(--set worker_start_timeout_s=...)."
            )
        if now >= next_report:
            report(pending_message(len(remaining), len(refs), now - start, bundle) + " Waiting.")
            next_report = now + report_every_s
    return list(ray.get(list(refs)))


__all__ = ["REPORT_EVERY_S", "WorkersNotStartedError", "pending_message", "wait_ready"]
