"""A container's `readinessProbe`, as the kubelet runs it, for daemon templates.

`httpGet` (`path`, `port` by number or by the name of one of the container's `ports`, `scheme`, `httpHeaders`;
ready on a 2xx/3xx answer), `tcpSocket` (a connection is accepted) and `exec` (`command` exits 0; run as a
process of this machine, not inside the container). The pod's IP is 127.0.0.1 locally (pods share the host's
network). Nothing is probed before `initialDelaySeconds`; after that the probe is tried at each of the runner's
polls (about every 0.1 s) instead of every `periodSeconds`, so a local daemon is ready as soon as it answers,
each try bounded by `timeoutSeconds` (default 1). Without a probe a container is ready once it runs.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.runner.nodes import POD_IP

__all__ = ["readiness"]

_KINDS = ("httpGet", "tcpSocket", "exec")


def readiness(container: Mapping[str, Any], where: str) -> Callable[[], bool]:
    """A check that says whether the container is ready now (always True without a `readinessProbe`).

    Raises:
        WorkflowError: The probe is of a kind the runner cannot run, or names a port the container lacks.
    """
    probe = container.get("readinessProbe")
    if not probe:
        return lambda: True
    kind = next((k for k in _KINDS if k in probe), None)
    if kind is None:
        raise WorkflowError(f"{where}: readinessProbe needs one of {', '.join(_KINDS)} (e.g. grpc is not supported)")
    timeout = float(probe.get("timeoutSeconds") or 1)
    not_before = time.monotonic() + float(probe.get("initialDelaySeconds") or 0)
    check = _check(kind, probe[kind] or {}, container, timeout, where)
    return lambda: time.monotonic() >= not_before and check()


def _check(
    kind: str, action: Mapping[str, Any], container: Mapping[str, Any], timeout: float, where: str
) -> Callable[[], bool]:
    if kind == "exec":
        command = [str(w) for w in action.get("command") or []]
        if not command:
            raise WorkflowError(f"{where}: readinessProbe.exec needs a command")
        return lambda: _exec_ok(command, timeout)
    port = _port(action.get("port"), container, where)
    host = str(action.get("host") or POD_IP)
    if kind == "tcpSocket":
        return lambda: _tcp_ok(host, port, timeout)
    scheme = str(action.get("scheme") or "HTTP").lower()
    url = f"{scheme}://{host}:{port}/{str(action.get('path') or '/').lstrip('/')}"
    headers = {str(h["name"]): str(h["value"]) for h in action.get("httpHeaders") or []}
    return lambda: _http_ok(url, headers, timeout)


def _port(port: object, container: Mapping[str, Any], where: str) -> int:
    """A probe's port: a number, or the name of one of the container's `ports`."""
    if isinstance(port, int) or str(port).isdigit():
        return int(str(port))
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise WorkflowError(f"{where}: readinessProbe port {port!r} is not a number nor a named port of the container")


def _tcp_ok(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ok(url: str, headers: Mapping[str, str], timeout: float) -> bool:
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return 200 <= int(answer.status) < 400
    except urllib.error.HTTPError as e:
        return 200 <= e.code < 400
    except (OSError, ValueError):
        return False


def _exec_ok(command: list[str], timeout: float) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
