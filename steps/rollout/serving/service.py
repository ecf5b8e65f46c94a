"""The local serving plane as a service: one long-lived process owns the servers, the routers and the locks.

Under pod isolation a step's children die with its pod, and its `/tmp` (where the routers' admin sockets live) is
its own; so the local profile runs this service (`llmrelease local up`, `python -m steps.rollout.serving.service`)
and the steps talk to it over HTTP (`steps.rollout.serving.remote.RemoteServing`), as pods on a cluster talk to the
Kubernetes API. It wraps a `LocalServing`: the model servers, HAProxy routers and canary watchdogs it starts are
its children, the state files stay where `LocalServing` keeps them, and its locks are the same `flock`s (a
`LocalServing` in another process on the same home, e.g. `llmrelease rollback` on the host, still serialises with
it). JSON in and out, on 127.0.0.1:

* `GET /healthz`; `GET /v1/planes/<model>/state`: the recorded `PlaneState`.
* `POST /v1/planes/<model>/lock` `{holder, wait_s, lease_s}` -> `{token, state}`: takes the model's lock for a
  lease of `lease_s` seconds, renewed by every call that names the token (never lapsing while one runs); 409 when
  another holder kept it `wait_s` seconds. A lease that lapses (its step died) is recorded and released here; so is
  one its canary step left behind: the step's heartbeat guard tripped and the lease has been idle for the heartbeat
  deadline (the watchdog needs the lock to restore the champion, and must not wait out the lease).
* `POST /v1/planes/<model>/unlock` `{token, state}`: records the state and releases the lock.
* `POST /v1/planes/<model>/call` `{token?, op, state, args}` -> `{state, result}`: one `ServingPlane` or router
  method on the caller's state (`OPS`); the changed state comes back. Changes need the lock's token.
  `ensure_servers` takes each version's weights-store URI: the service fetches and verifies the weights into its
  own model cache (a step pod's folder is not visible here under pod isolation).
* `POST /v1/planes/<model>/guard` `{op: start|renew|lapse, workflow_uid, candidate, deadline, factor, why}`.
* `POST /v1/planes/<model>/shutdown`: stop the model's router and servers.

An error answers `{"error": <one line>, "kind": <class name>}`; SIGTERM stops every model's router and servers.
The model servers are forked from a launcher the service starts with it (`steps.rollout.serving.launcher`: the
server's imports paid once, not per server); LLMRELEASE_SERVER_PRELOAD=0 starts each as a plain process.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from registry.errors import ReleaseError
from steps.rollout.serving.base import PlaneLocked, PlaneState, Served, ServerState, ServingError
from steps.rollout.serving.guard import read_heartbeat
from steps.rollout.serving.launcher import preload_enabled
from steps.rollout.serving.local import LocalServing

__all__ = ["OPS", "PlaneService", "make_server"]

_PATH = re.compile(r"^/v1/planes/(?P<model>[^/]+)/(?P<action>state|lock|unlock|call|guard|shutdown)$")
READ_OPS = frozenset({"router", "router_url", "is_ready", "router.weights", "router.backends"})
OPS = READ_OPS | {
    "ensure_servers", "stop_server", "reap", "ensure_router",
    "router.set_weights", "router.add_backend", "router.remove_backend", "router.stop",
}  # fmt: skip


@dataclass
class _Lease:
    token: str
    holder: str
    lock: IO[str]
    state: PlaneState
    lease_s: float
    expires_at: float
    busy: int = 0


class PlaneService:
    """The service's state: a `LocalServing`, and the lease of each model's lock a remote holder has."""

    def __init__(self, plane: LocalServing, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Serve `plane` (the home's LocalServing)."""
        self.plane = plane
        self._clock = clock
        self._mutex = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._guarded: dict[str, str] = {}  # model -> the holder (canary step) that keeps its heartbeat guard

    def acquire(self, model: str, holder: str, wait_s: float, lease_s: float) -> tuple[str, PlaneState]:
        """Take the model's lock for `holder`; ServingError naming the holder when it stays taken `wait_s`."""
        lock = self.plane.lock_file(model).open("w")
        deadline = self._clock() + max(0.0, wait_s)
        while True:
            self.expire()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self._clock() >= deadline:
                    lock.close()
                    raise PlaneLocked(
                        f"the serving plane lock of {model} is held by {self._holder(model)}: wait for it to "
                        f"finish or raise LLMRELEASE_SERVING_LOCK_WAIT_S (waited {wait_s:g}s)"
                    ) from None
                time.sleep(0.05)
        token = uuid.uuid4().hex
        state = self.plane.state(model)
        with self._mutex:
            self._leases[model] = _Lease(token, holder, lock, state, lease_s, self._clock() + lease_s)
        return token, state

    def _holder(self, model: str) -> str:
        with self._mutex:
            lease = self._leases.get(model)
        return repr(lease.holder) if lease else "another process on this machine"

    def release(self, model: str, token: str, state: PlaneState) -> None:
        """Record `state` and release the lock the token holds."""
        with self._mutex:
            lease = self._lease(model, token)
            del self._leases[model]
        self._close(lease, state)

    def _close(self, lease: _Lease, state: PlaneState) -> None:
        try:
            self.plane.record(state)
        finally:
            lease.lock.close()  # closing the file releases the flock

    def _lease(self, model: str, token: str) -> _Lease:
        lease = self._leases.get(model)
        if lease is None or lease.token != token:
            raise ServingError(
                f"the serving plane lock of {model} is not held by this caller (its lease lapsed or was released): "
                "take the lock again (`locked`) and redo the change"
            )
        return lease

    def expire(self) -> list[str]:
        """Record and release the leases that lapsed (their holder died); return their models."""
        now = self._clock()
        with self._mutex:
            lapsed = [m for m, lease in self._leases.items() if lease.busy == 0 and self._lapsed(m, lease, now)]
            leases = [self._leases.pop(m) for m in lapsed]
        for lease in leases:
            self._close(lease, lease.state)
        return lapsed

    def _lapsed(self, model: str, lease: _Lease, now: float) -> bool:
        """Whether a lease lapsed: it ran out, or its canary step died holding it.

        The latter: its holder keeps the model's canary guard, the guard tripped (the step stopped reporting), and
        the lease sat idle for the heartbeat deadline.
        """
        if lease.expires_at <= now:
            return True
        if self._guarded.get(model) != lease.holder:
            return False
        beat = read_heartbeat(self.plane.model_dir(model))
        idle_s = now - (lease.expires_at - lease.lease_s)
        return beat is not None and beat.tripped_at is not None and idle_s >= beat.deadline_s

    def call(self, model: str, token: str | None, op: str, state: PlaneState, args: dict[str, Any]) -> Any:
        """Run one plane or router method on the caller's state; return (its state after, its result)."""
        if op not in OPS:
            raise ServingError(f"unknown serving plane operation {op!r}: use one of {', '.join(sorted(OPS))}")
        if state.model != model:
            raise ServingError(f"state of {state.model!r} sent for model {model!r}: send the model's own state")
        lease = None
        if token is not None or op not in READ_OPS:
            with self._mutex:
                lease = self._lease(model, token or "")
                lease.busy += 1
        try:
            result = _run(self.plane, op, state, args)
        finally:
            if lease is not None:
                with self._mutex:
                    lease.busy -= 1
                    lease.state, lease.expires_at = state, self._clock() + lease.lease_s
        return state, result

    def guard(self, model: str, body: dict[str, Any]) -> None:
        """Start, renew or lapse a canary's heartbeat guard; its watchdog runs beside this service."""
        guard = self.plane.canary_guard(model, str(body["workflow_uid"]), str(body["candidate"]), body["deadline"])
        if body.get("holder"):
            with self._mutex:
                self._guarded[model] = str(body["holder"])
        op = body.get("op")
        if op == "start":
            guard.start()
        elif op == "renew":
            guard.renew(factor=float(body.get("factor", 1.0)))
        elif op == "lapse":
            guard.lapse(str(body.get("why", "")))
        else:
            raise ServingError(f"unknown guard operation {op!r}: use start, renew or lapse")

    def close(self) -> None:
        """Release every lease, then stop every model's router and servers (the service is stopping)."""
        with self._mutex:
            leases, self._leases = list(self._leases.values()), {}
        for lease in leases:
            self._close(lease, lease.state)
        for model in self.plane.models():
            with contextlib.suppress(ReleaseError, OSError):
                self.plane.shutdown(model)


def _location(sent: Any) -> str | Served:
    """A sent weights location: a URI or folder, or (an object) a `Served` with its prompt."""
    return Served.model_validate(sent) if isinstance(sent, dict) else str(sent)


def _run(plane: LocalServing, op: str, state: PlaneState, args: dict[str, Any]) -> Any:
    """Dispatch one operation (`OPS`) to the LocalServing."""
    if op == "ensure_servers":
        wanted = {str(v): _location(loc) for v, loc in dict(args["wanted"]).items()}  # URIs: fetched and verified here
        return {v: s.model_dump(mode="json") for v, s in plane.ensure_servers(state, wanted).items()}
    if op == "is_ready":
        return plane.is_ready(state, ServerState.model_validate(args["server"]))
    if op == "stop_server":
        return plane.stop_server(state, str(args["version"]))
    if op == "reap":
        return plane.reap(state)
    if op == "ensure_router":
        plane.ensure_router(state, ServerState.model_validate(args["first"]))
        return None
    if op == "router_url":
        return plane.router_url(state)
    router = plane.router(state)
    if op == "router":
        return None
    if op == "router.weights":
        return router.weights()
    if op == "router.backends":
        return router.backends
    if op == "router.set_weights":
        return router.set_weights({str(k): v for k, v in dict(args["weights"]).items()})
    if op == "router.add_backend":
        return router.add_backend(str(args["name"]), str(args["address"]))
    if op == "router.remove_backend":
        return router.remove_backend(str(args["name"]))
    return router.stop()  # "router.stop"


class _Handler(BaseHTTPRequestHandler):
    server: _PlaneHTTPServer
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle's algorithm on a kept-alive connection, the body waits for
    # the client's delayed ACK, 40 ms on Linux, on every call (seen as 44 ms per guard renewal; ~1 ms without).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: errors go back to the caller, not to the service log."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        """`GET /healthz` and `GET /v1/planes/<model>/state`."""
        if self.path == "/healthz":
            self._answer(200, {"ok": True})
            return
        self._dispatch(lambda model, action, body: self._get(model, action))

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """Every change: lock, unlock, call, guard, shutdown."""
        self._dispatch(self._post)

    def _get(self, model: str, action: str) -> Any:
        if action != "state":
            raise ServingError(f"GET {self.path}: use GET /v1/planes/<model>/state or POST for {action}")
        return self.server.service.plane.state(model).model_dump(mode="json")

    def _post(self, model: str, action: str, body: dict[str, Any]) -> Any:
        service = self.server.service
        if action == "lock":
            wait_s, lease_s = float(body.get("wait_s", 30.0)), float(body.get("lease_s", 300.0))
            token, state = service.acquire(model, str(body.get("holder", "?")), wait_s, lease_s)
            return {"token": token, "state": state.model_dump(mode="json")}
        if action == "unlock":
            service.release(model, str(body["token"]), PlaneState.model_validate(body["state"]))
            return {}
        if action == "call":
            state = PlaneState.model_validate(body["state"])
            state, result = service.call(model, body.get("token"), str(body["op"]), state, body.get("args") or {})
            return {"state": state.model_dump(mode="json"), "result": result}
        if action == "guard":
            service.guard(model, body)
            return {}
        if action == "shutdown":
            service.plane.shutdown(model)
            return {}
        raise ServingError(f"POST {self.path}: use POST on lock, unlock, call, guard or shutdown")

    def _dispatch(self, handle: Callable[[str, str, dict[str, Any]], Any]) -> None:
        match = _PATH.match(self.path)
        try:
            if match is None:
                raise ServingError(f"no such path {self.path!r}: use /healthz or /v1/planes/<model>/<action>")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            self._answer(200, handle(match["model"], match["action"], body))
        except ReleaseError as e:
            self._error(409, type(e).__name__, str(e))
        except (KeyError, ValueError, TypeError, ValidationError) as e:
            self._error(400, "ServingError", f"bad request to {self.path}: {type(e).__name__}: {e}")
        except Exception as e:  # the caller gets one line; the service keeps serving
            self._error(500, "ServingError", f"serving plane service failed on {self.path}: {type(e).__name__}: {e}")

    def _error(self, status: int, kind: str, message: str) -> None:
        self._answer(status, {"error": " ".join(message.split())[:2000], "kind": kind})

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _PlaneHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: PlaneService) -> None:
        super().__init__(address, _Handler)
        self.service = service


def make_server(service: PlaneService, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """The HTTP server of `service` on host:port (0: a free port; read it back from `server_address`)."""
    return _PlaneHTTPServer((host, port), service)


def _expire_loop(service: PlaneService, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with contextlib.suppress(ReleaseError, OSError):
            service.expire()


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; then stop every model's router and servers."""
    parser = argparse.ArgumentParser(prog="python -m steps.rollout.serving.service")
    parser.add_argument("--home", type=Path, required=True, help="LLMRELEASE_HOME: the plane's state lives here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    plane = LocalServing(args.home)
    launcher = plane.start_launcher() if preload_enabled() else None  # imports while the service starts
    service = PlaneService(plane)
    httpd = make_server(service, args.host, args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_expire_loop, args=(service, stop), daemon=True).start()
    print(f"serving plane service on http://{args.host}:{httpd.server_address[1]} (home {args.home})", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        service.close()
        if launcher is not None:
            launcher.close()
        print("serving plane service stopped: every router and model server it owned is down", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
