"""Starting or joining Ray: a local instance bound to 127.0.0.1, or an existing cluster.

Also the driver's copy of a user's error that a Ray task raised (:func:`unwrap`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_CLIENT_SCHEME = "ray://"

_T = TypeVar("_T")

#: Default of ``connect_timeout_s``: how long joining a cluster may wait for its address to answer.
DEFAULT_CONNECT_TIMEOUT_S = 30.0


class RayConnectionError(ConnectionError):
    """The Ray cluster at the given address did not answer in time."""


def cluster_address(ray_address: str | None) -> str | None:
    """The cluster to join: ``ray_address``, else ``RAY_ADDRESS`` (set by ``ray job submit``)."""
    return ray_address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(
    ray_address: str | None = None,
    num_cpus: int | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
    connect_timeout_s: float | None = DEFAULT_CONNECT_TIMEOUT_S,
) -> str:
    """Make sure Ray is initialised; say how: ``"started"`` a local instance, ``"joined"`` a
    cluster, or found it ``"existing"`` (initialised by the caller, left alone).

    A local instance listens on 127.0.0.1 only (no routable interface), with its dashboard, when
    enabled, on 127.0.0.1 too. With ``ray_address`` or ``RAY_ADDRESS`` the driver joins that
    cluster.

    Joining first checks that the address answers, within ``connect_timeout_s``: ``ray.init`` on
    its own keeps retrying an address where nothing answers for many minutes.

    :param ray_address: cluster to join (``"host:port"``, ``"auto"`` or ``"ray://host:port"``).
    :param num_cpus: logical CPUs of a local instance.
    :param ray_init_kwargs: extra keyword arguments of ``ray.init``.
    :param connect_timeout_s: how long the cluster's address may take to answer (``None``: no
        check, ``ray.init``'s own behaviour).
    :raises RayConnectionError: the address did not answer in time.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    kwargs: dict[str, Any] = {"configure_logging": False}
    kwargs.update(ray_init_kwargs or {})
    address = cluster_address(ray_address)
    if address:
        if connect_timeout_s is not None:
            wait_for_cluster(address, connect_timeout_s)
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


def resolve_cluster_address(address: str) -> tuple[str, int]:
    """The ``(host, port)`` that ``ray.init(address=address)`` will contact.

    ``"auto"`` is looked up the way Ray does (the cluster last started on this machine), and
    Ray's rewriting of ``localhost``/``127.0.0.1`` to the node's own address is applied.
    """
    if address.startswith(_CLIENT_SCHEME):
        return _split_host_port(address[len(_CLIENT_SCHEME) :], address)
    from ray._private import services

    canonical = services.canonicalize_bootstrap_address(address)
    if canonical is None:
        raise RayConnectionError(
            f"No running Ray cluster was found for ray_address={address!r}. Start one with "
            "`ray start --head`, give its address as ray_address='host:port', or pass "
            "ray_address=None (and unset RAY_ADDRESS) to start a local Ray instance."
        )
    return _split_host_port(canonical, address)


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Return once the Ray cluster at ``address`` answers, or raise within ``timeout_s`` seconds.

    "Answers" means its port accepts a TCP connection and completes an HTTP/2 (gRPC) handshake,
    which a Ray GCS (or Ray Client server) does at once. A refused connection is retried until the
    deadline, so a head node that is still starting is waited for.

    :param address: the cluster's address, as given to ``ray.init``.
    :param timeout_s: the time limit in seconds.
    :raises RayConnectionError: the address did not answer, with what to check.
    """
    deadline = time.monotonic() + float(timeout_s)
    try:
        host, port = resolve_cluster_address(address)
    except ConnectionError as exc:  # "auto" with no cluster: Ray's own message says why
        if isinstance(exc, RayConnectionError):
            raise
        raise RayConnectionError(f"ray_address={address!r}: {exc}") from exc
    last_error: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 5.0)):
                pass
        except socket.gaierror as exc:
            raise RayConnectionError(
                f"The Ray cluster address {address!r} names a host that does not resolve ({exc}). "
                "Check ray_address (or RAY_ADDRESS): it should be the head node's 'host:port'."
            ) from exc
        except OSError as exc:
            last_error = exc
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))
            continue
        if _tls_enabled():
            return
        remaining = deadline - time.monotonic()
        if remaining > 0 and _grpc_answers(host, port, remaining):
            return
        last_error = TimeoutError("the port accepted a connection but did not answer as Ray does")
        break
    raise RayConnectionError(_did_not_answer(address, host, port, timeout_s, last_error))


def _grpc_answers(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` completes a gRPC (HTTP/2) handshake within ``timeout_s``."""
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def _tls_enabled() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _split_host_port(host_port: str, original: str) -> tuple[str, int]:
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(
            f"ray_address={original!r} is not an address Ray can join: give the head node's "
            "'host:port' (e.g. '10.0.0.5:6379'), 'auto', or 'ray://host:port' for Ray Client."
        )
    return host.strip("[]"), int(port)


def _did_not_answer(
    address: str, host: str, port: int, timeout_s: float, error: BaseException | None
) -> str:
    rewritten = f" (Ray contacts {host}:{port})" if f"{host}:{port}" not in address else ""
    cause = f" Last error: {type(error).__name__}: {error}." if error is not None else ""
    hint = ""
    try:
        from ray._private import ray_constants

        if (
            ray_constants.ENABLE_RAY_CLUSTER
            and _is_loopback(address)
            and _loopback_answers(address)
        ):
            hint = (
                f" Ray rewrote the loopback address to this machine's address; for a cluster that "
                f"listens on 127.0.0.1 only, set {_LOOPBACK_ENV}=0 in the environment."
            )
    except Exception:  # informational only
        pass
    return (
        f"The Ray cluster at ray_address={address!r}{rewritten} did not answer within "
        f"{timeout_s:g} s.{cause} Check that the head node is running (`ray status` on it), that "
        "the address and port are right (the port `ray start --head` printed, 6379 by default) and "
        "that no firewall blocks it; or pass ray_address=None (and unset RAY_ADDRESS) to start a "
        "local Ray instance. A cluster that is slow to come up needs a larger connect_timeout_s."
        f"{hint}"
    )


def _loopback_answers(address: str) -> bool:
    """Whether something listens at the loopback ``address`` as given (before Ray's rewrite): only
    then is the rewrite, not the address, the likely cause."""
    host, _, port = address.removeprefix(_CLIENT_SCHEME).rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _is_loopback(address: str) -> bool:
    host = address.removeprefix(_CLIENT_SCHEME).rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def unwrap(call: Callable[[], _T]) -> _T:
    """Re-raise the user's own error (ValueError, TypeError...) from a Ray task error."""
    from ray.exceptions import RayTaskError

    try:
        return call()
    except RayTaskError as err:
        cause = err.cause
        if isinstance(cause, ValueError | TypeError | KeyError):
            raise same_error(cause, err) from err
        raise


def same_error(cause: BaseException, err: BaseException) -> BaseException:
    """A copy of ``cause`` raised in the driver (its class may not rebuild from ``args``)."""
    try:
        return type(cause)(*cause.args)
    except Exception:
        return RuntimeError(f"{type(cause).__name__}: {cause}")
