"""Starting or joining Ray: a local instance bound to 127.0.0.1, or an existing cluster."""

from __future__ import annotations

import os
from typing import Any

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_address(ray_address: str | None) -> str | None:
    """The cluster to join: ``ray_address``, else ``RAY_ADDRESS`` (set by ``ray job submit``)."""
    return ray_address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(
    ray_address: str | None = None,
    num_cpus: int | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> str:
    """Make sure Ray is initialised; say how: ``"started"`` a local instance, ``"joined"`` a
    cluster, or found it ``"existing"`` (initialised by the caller, left alone).

    A local instance listens on 127.0.0.1 only (no routable interface), with its dashboard, when
    enabled, on 127.0.0.1 too. With ``ray_address`` or ``RAY_ADDRESS`` the driver joins that cluster.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    kwargs: dict[str, Any] = {"configure_logging": False}
    kwargs.update(ray_init_kwargs or {})
    address = cluster_address(ray_address)
    if address:
        ray.init(address=address, **kwargs)
        return "joined"

    from ray._private import ray_constants

    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    if num_cpus is not None:
        kwargs.setdefault("num_cpus", num_cpus)
    previous_env = os.environ.get(_LOOPBACK_ENV)
    previous_const = ray_constants.ENABLE_RAY_CLUSTER
    # Ray binds the host's routable address unless told that this is a single-machine instance;
    # the variable is read by the driver (constant) and by every process Ray spawns (environment).
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_const
        if previous_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = previous_env
    return "started"
