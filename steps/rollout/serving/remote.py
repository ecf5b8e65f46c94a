"""`RemoteServing`: the local serving plane reached over HTTP, as a step reaches the Kubernetes API.

`steps.rollout.serving.factory.serving_plane` returns it when `LLMRELEASE_SERVING_URL` is set (the local profile's
ConfigMap sets it to its plane service, `steps.rollout.serving.service`). It implements `ServingPlane` (and
`GuardedPlane`) with the same meaning as `LocalServing`: `locked(model)` takes the model's lock on the service for
a lease (renewed by every call made under it) and yields its state; each method sends that state, the service
runs the method on it, and the changed state is copied back into the caller's object (so the caller's references
to it and its servers stay live); the block's end sends the final state, which the service records, and releases
the lock. `router(state)` is a `RemoteRouter`; `canary_guard(...)` a `RemoteGuard`, whose watchdog runs beside the
service and so outlives the step's pod. A service error comes back as a one-line `ServingError` (`RoutingError`,
`GuardTripped` where the service raised those).

Knobs: LLMRELEASE_SERVING_LOCK_WAIT_S (how long `locked` waits for another holder, default 900) and
LLMRELEASE_SERVING_LEASE_S (how long a silent holder keeps the lock, default 600: a deploy fetches weights inside it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from steps.rollout.routing.base import RoutingError
from steps.rollout.serving.base import PlaneLocked, PlaneState, Served, ServerState, ServingError
from steps.rollout.serving.guard import GuardTripped

__all__ = ["SERVING_URL_ENV", "RemoteGuard", "RemoteRouter", "RemoteServing"]

SERVING_URL_ENV = "LLMRELEASE_SERVING_URL"
_ERRORS: dict[str, type[ServingError] | type[RoutingError] | type[GuardTripped]] = {
    "RoutingError": RoutingError,
    "GuardTripped": GuardTripped,
    "PlaneLocked": PlaneLocked,
}
_POLL_S = 20.0  # one lock request waits at most this long on the service; `locked` asks again until its deadline


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ServingError(f"{name}={raw!r} is not a positive number of seconds: set e.g. {default:g} or unset it")
    return value


class RemoteServing:
    """The local plane's service, driven over HTTP: a `ServingPlane` (see the module docstring)."""

    def __init__(self, url: str, *, timeout: float = 900.0, holder: str | None = None) -> None:
        """Talk to the plane service at `url` (e.g. http://127.0.0.1:8790).

        Args:
            url: the service's base URL (LLMRELEASE_SERVING_URL).
            timeout: seconds one call may take (starting a model server waits for its first completion).
            holder: how this caller is named to other lock holders; default host, pid and program.
        """
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)
        self._holder = holder or f"{socket.gethostname()} pid {os.getpid()} ({Path(sys.argv[0]).name})"
        self._tokens: dict[str, str] = {}

    # --- transport ---------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, self.url + path, json=body)
        except httpx.HTTPError as e:
            raise ServingError(
                f"serving plane service at {self.url} did not answer ({type(e).__name__}: {e}): start it with "
                "`llmrelease local up`, or unset LLMRELEASE_SERVING_URL to serve in this process"
            ) from e
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": f"HTTP {response.status_code}: {response.text[:300]}"}
        if response.status_code != 200:
            error = _ERRORS.get(str(payload.get("kind")), ServingError)
            raise error(" ".join(str(payload.get("error", payload)).split()))
        return payload

    def _call(self, state: PlaneState, op: str, **args: Any) -> Any:
        body = {"token": self._tokens.get(state.model), "op": op, "state": state.model_dump(mode="json"), "args": args}
        answer = self._send("POST", f"/v1/planes/{state.model}/call", body)
        _adopt(state, PlaneState.model_validate(answer["state"]))
        return answer["result"]

    # --- ServingPlane ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, model: str) -> Iterator[PlaneState]:
        """Hold the model's lock on the service; yield its state and record it when the block ends (even by error)."""
        if model in self._tokens:
            raise ServingError(f"the serving plane lock of {model} is already held by this caller: it is not reentrant")
        deadline = time.monotonic() + _seconds("LLMRELEASE_SERVING_LOCK_WAIT_S", 900.0)
        lease_s = _seconds("LLMRELEASE_SERVING_LEASE_S", 600.0)
        while True:
            wait_s = max(0.0, min(_POLL_S, deadline - time.monotonic()))
            body = {"holder": self._holder, "wait_s": wait_s, "lease_s": lease_s}
            try:
                answer = self._send("POST", f"/v1/planes/{model}/lock", body)
                break
            except PlaneLocked:
                if time.monotonic() >= deadline:
                    raise
        token, state = str(answer["token"]), PlaneState.model_validate(answer["state"])
        self._tokens[model] = token
        try:
            yield state
        finally:
            del self._tokens[model]
            self._send("POST", f"/v1/planes/{model}/unlock", {"token": token, "state": state.model_dump(mode="json")})

    def state(self, model: str) -> PlaneState:
        """The model's recorded state, read from the service without the lock."""
        return PlaneState.model_validate(self._send("GET", f"/v1/planes/{model}/state"))

    def ensure_server(self, state: PlaneState, version: str, model_dir: Path | str | Served) -> ServerState:
        """Serve one version (call inside `locked`); see `ensure_servers`."""
        return self.ensure_servers(state, {version: model_dir})[version]

    def ensure_servers(self, state: PlaneState, wanted: Mapping[str, Path | str | Served]) -> dict[str, ServerState]:
        """Serve several versions: version -> weights (a folder or URI the service can read, or a `Served`)."""
        sent = {v: loc.model_dump(mode="json") if isinstance(loc, Served) else str(loc) for v, loc in wanted.items()}
        self._call(state, "ensure_servers", wanted=sent)
        return {version: state.servers[version] for version in wanted}

    def is_ready(self, state: PlaneState, server: ServerState) -> bool:
        """Whether the version's server runs and answers a real completion now (the service checks)."""
        return bool(self._call(state, "is_ready", server=server.model_dump(mode="json")))

    def stop_server(self, state: PlaneState, version: str) -> None:
        """Stop serving a version (call inside `locked`; take it out of the router first)."""
        self._call(state, "stop_server", version=version)

    def reap(self, state: PlaneState) -> list[str]:
        """Stop the servers whose hot window ended and that play no role; return their versions."""
        return [str(v) for v in self._call(state, "reap")]

    def router(self, state: PlaneState) -> RemoteRouter:
        """The model's running router (ServingError when it has none or it died)."""
        self._call(state, "router")
        return RemoteRouter(self, state)

    def ensure_router(self, state: PlaneState, first: ServerState) -> RemoteRouter:
        """The model's router, started with `first` taking all traffic when there is none (call inside `locked`)."""
        self._call(state, "ensure_router", first=first.model_dump(mode="json"))
        return RemoteRouter(self, state)

    def router_url(self, state: PlaneState) -> str:
        """The OpenAI-compatible base URL (…/v1) clients call: the router's."""
        return str(self._call(state, "router_url"))

    def shutdown(self, model: str) -> None:
        """Stop the model's router and every server, and clear its roles."""
        self._send("POST", f"/v1/planes/{model}/shutdown", {})

    def canary_guard(self, model: str, workflow_uid: str, candidate: str, deadline: float) -> RemoteGuard:
        """The heartbeat guard of `workflow_uid`'s canary of `candidate`, kept by the service."""
        return RemoteGuard(self, model, workflow_uid=workflow_uid, candidate=candidate, deadline=deadline)


class RemoteRouter:
    """The model's router, driven through the plane service: a `BackendRouter`."""

    def __init__(self, plane: RemoteServing, state: PlaneState) -> None:
        """Drive the router of `state`'s model (its state is kept in step with the service's answers)."""
        self._plane, self._state = plane, state

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Apply a split (RoutingError when refused: nothing changed)."""
        self._plane._call(self._state, "router.set_weights", weights=dict(weights))

    def weights(self) -> dict[str, int]:
        """The live split: backend -> percent."""
        return {str(k): int(v) for k, v in self._plane._call(self._state, "router.weights").items()}

    @property
    def backends(self) -> dict[str, str]:
        """Backend name -> "host:port", in configuration order."""
        return {str(k): str(v) for k, v in self._plane._call(self._state, "router.backends").items()}

    def add_backend(self, name: str, address: str) -> None:
        """Add a backend with weight 0; move it when it moved."""
        self._plane._call(self._state, "router.add_backend", name=name, address=address)

    def remove_backend(self, name: str) -> bool:
        """Drain and remove a backend that has weight 0; False when requests were still attached after draining."""
        return bool(self._plane._call(self._state, "router.remove_backend", name=name))

    def stop(self) -> None:
        """Stop the router: the model's endpoint answers no more."""
        self._plane._call(self._state, "router.stop")


class RemoteGuard:
    """A canary's heartbeat guard kept by the plane service: a `CanaryGuard`."""

    def __init__(self, plane: RemoteServing, model: str, *, workflow_uid: str, candidate: str, deadline: float):
        """Guard `candidate`'s canary of `model` by `workflow_uid` with a `deadline`-second heartbeat."""
        self._plane, self._model = plane, model
        self._body = {"workflow_uid": workflow_uid, "candidate": candidate, "deadline": deadline}
        self._body["holder"] = plane._holder  # its lock leases end with the guard when the step dies holding one

    def _guard(self, op: str, **extra: Any) -> None:
        self._plane._send("POST", f"/v1/planes/{self._model}/guard", {**self._body, "op": op, **extra})

    def start(self) -> None:
        """Write a fresh heartbeat and start the watchdog beside the service."""
        self._guard("start")

    def renew(self, *, factor: float = 1.0) -> None:
        """Push the deadline ahead; GuardTripped when the watchdog already acted."""
        self._guard("renew", factor=factor)

    def lapse(self, why: str) -> None:
        """Expire the heartbeat now: the watchdog restores the champion at once."""
        self._guard("lapse", why=why)


def _adopt(state: PlaneState, new: PlaneState) -> None:
    """Copy `new` into `state` in place, keeping the caller's `ServerState` objects for versions that stay."""
    for field in ("router_port", "champion", "previous", "canary"):
        setattr(state, field, getattr(new, field))
    for version in [v for v in state.servers if v not in new.servers]:
        del state.servers[version]
    for version, server in new.servers.items():
        current = state.servers.get(version)
        if current is None:
            state.servers[version] = server
        else:
            for name in ServerState.model_fields:
                setattr(current, name, getattr(server, name))
