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

A Ray Client join takes ~3 s, nearly all of it on the head: its proxier starts a session server process for the
client (Python, Ray's imports, a driver's join) and reaches it through gRPC's reconnect backoff (1 s, then 1.6 s).
`join_early` starts that join on a thread at the step's start, so the step imports MLflow and reads the registry
meanwhile; `connect_ray` then waits for it, and raises its error, only when workers are needed.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from steps.evals.engines.base import EvalError

__all__ = ["connect_ray", "join_early", "ray_address"]

_DEFAULT_TIMEOUT_S = 60.0
_JOIN_ATTEMPTS = 3  # Ray Client: a session server that failed to start is retried after 2 s, then 4 s
# What a Ray Client join imports on first use that the step's own imports (MLflow: pandas and pyarrow, fastapi)
# share, imported by `join_early` before its thread starts: two threads never import one package at once (a
# package whose __init__ imports its own submodules can then hand a thread a half-initialised module).
_JOIN_IMPORTS = (
    "numpy",
    "pyarrow.ipc",
    "pyarrow.json",
    "pydantic.v1",
    "anyio.to_thread",
    "starlette.concurrency",
    "starlette.datastructures",
    "grpc.experimental",
    "cloudpickle",
    "ray.util.client.worker",
    "ray._common.usage.usage_lib",
    "ray._common.pydantic_compat",
    "ray._private.arrow_serialization",
    "ray._private.grpc_utils",
)
_joining: Future[None] | None = None


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

    global _joining
    if _joining is not None:  # join_early's: wait for it, with its error
        joining, _joining = _joining, None
        joining.result()
        return
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


def join_early() -> None:
    """Start joining a Ray Client RAY_ADDRESS on a thread now; `connect_ray` waits for it when workers are needed.

    Only for a `ray://` address whose head answers at once (else `connect_ray` waits and reports as before). The
    join's shared imports are done here, on the caller's thread (`_JOIN_IMPORTS`), and so is what `ray.init` does
    only on the main thread: SIGTERM exits through SystemExit, so the step's cleanup and Ray's disconnect run. A
    step that needs no worker (every result cached) still waits for the join when it exits (Python joins the
    thread), and then leaves the cluster as any driver does.
    """
    global _joining
    address = ray_address()
    if _joining is not None or not address or not address.startswith("ray://") or not _answers(address):
        return
    for name in _JOIN_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # not installed here: nothing the two threads could share
            continue
    on_main = threading.current_thread() is threading.main_thread()  # where Python lets a handler be set
    if on_main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(signum))
    logging.getLogger("ray._private.worker").addFilter(_NO_THREAD_WARNING)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-join")
    _joining = executor.submit(_join, address, _DEFAULT_TIMEOUT_S)
    executor.shutdown(wait=False)


class _NoThreadWarning(logging.Filter):
    """Drops ray.init's warning that it set no SIGTERM handler off the main thread: `join_early` set it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SIGTERM handler is not set")


_NO_THREAD_WARNING = _NoThreadWarning()


def _answers(address: str) -> bool:
    """Whether the head's host:port accepts a TCP connection within 0.5 s (no port: False)."""
    head = _head(address)
    if head is None:
        return False
    try:
        with socket.create_connection(head, timeout=0.5):
            return True
    except OSError:
        return False


def _head(address: str) -> tuple[str, int] | None:
    """The (host, port) of a head address, `ray://` or not; None for `auto` and addresses without a port."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


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
    head = _head(address)
    if head is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(head, timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise EvalError(
                    f"RAY_ADDRESS={address}: the Ray head did not answer within {timeout_s:.0f}s ({e.strerror or e}):"
                    " start the cluster (llmrelease local up) or fix RAY_ADDRESS, or unset it to run Ray in the step"
                ) from None
            time.sleep(0.5)
