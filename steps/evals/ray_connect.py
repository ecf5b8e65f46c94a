"""Where the eval workers run: a Ray cluster named by RAY_ADDRESS, else a Ray started inside this process.

* `RAY_ADDRESS=ray://head:port` (Ray Client): the production choice (docs/install.md, section 6) and what
  `llmrelease local up` writes for its two-node cluster. The step pod stays the driver through one outbound
  port and needs nothing of a Ray node on its disk; the steps image needs `ray[client]` (grpcio). With token
  authentication (the `llmrelease-ray` Secret: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN), Ray's client channel sends
  the token with every call; without it the head refuses the client, which Ray reports as a connection timeout.
* `RAY_ADDRESS=host:port` (a GCS address): the driver joins as a full Ray driver. It needs the node's session
  folder under the Ray temp dir and the raylet's sockets on its own disk, and every node must reach it: only for
  a process on a Ray node's machine, never a pod with its own /tmp.
* unset: a local Ray inside the step's pod on its own CPUs (no dashboard), as before.

Joining is bounded: the head's port must answer within `timeout_s`, and any failure to join is one line
naming RAY_ADDRESS and the fix.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from steps.evals.engines.base import EvalError

__all__ = ["connect_ray", "ray_address"]

_DEFAULT_TIMEOUT_S = 60.0
_JOIN_ATTEMPTS = 3  # Ray Client: a session server that failed to start is retried after 2 s, then 4 s


def ray_address() -> str | None:
    """The cluster the workers run on (RAY_ADDRESS), or None for a Ray started in this process."""
    return os.environ.get("RAY_ADDRESS") or None


def connect_ray(num_cpus: int | None = None, *, timeout_s: float = _DEFAULT_TIMEOUT_S) -> None:
    """Join the Ray cluster at RAY_ADDRESS, or start a local Ray (num_cpus, no dashboard, worker logs kept here).

    Args:
        num_cpus: CPUs of a local Ray (None: the cores this process may run on); ignored when joining a cluster.
        timeout_s: How long the cluster's head may take to answer before giving up.

    Raises:
        EvalError: RAY_ADDRESS is set but the cluster cannot be reached or joined within `timeout_s` (one line).
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_address()
    if address:
        _join(address, timeout_s)
        return
    root = str(Path(__file__).resolve().parents[2])  # so local workers import `steps` from any cwd
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=num_cpus or _usable_cores(),
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


def _usable_cores() -> int:
    """This process's CPU affinity (a container's cpuset), else the machine's CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _join(address: str, timeout_s: float) -> None:
    """ray.init(address=...) once the head answers; every failure one EvalError line naming RAY_ADDRESS."""
    import ray
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    _await_port(address, timeout_s)
    retrying = Retrying(
        retry=retry_if_exception(_server_failed_to_start),
        stop=stop_after_attempt(_JOIN_ATTEMPTS),
        wait=wait_exponential(multiplier=2, max=8),
        before_sleep=lambda _: ray.shutdown(),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    except Exception as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise EvalError(
            f"RAY_ADDRESS={address}: cannot join the Ray cluster ({type(e).__name__}: {detail}): check the "
            "address, the Ray version and RAY_AUTH_TOKEN, or unset RAY_ADDRESS to run Ray in the step"
        ) from None


def _server_failed_to_start(error: BaseException) -> bool:
    """Whether `error` is a Ray Client session server that failed to start: worth another try.

    The head's proxier forks one server per client, and of two clients arriving together one sometimes fails to
    start ("Initialization failure from server", seen when the demo's two eval steps joined within a second).
    """
    return isinstance(error, ConnectionError) and "Initialization failure from server" in str(error)


def _await_port(address: str, timeout_s: float) -> None:
    """Wait until the head's host:port accepts a TCP connection (`auto` and addresses without a port: skipped)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise EvalError(
                    f"RAY_ADDRESS={address}: the Ray head did not answer within {timeout_s:.0f}s ({e.strerror or e}):"
                    " start the cluster (llmrelease local up) or fix RAY_ADDRESS, or unset it to run Ray in the step"
                ) from None
            time.sleep(0.5)
