"""The local serving plane's canary guard: a canary that stops hearing from its workflow aborts itself.

While a canary is in flight, the canary step holds a *heartbeat*: a lease with a deadline kept in the plane's state
folder (`<LLMRELEASE_HOME>/serving/<model>/guard.json`: which workflow, which candidate, until when), renewed at
every analysis tick. A detached *watchdog* (`python -m steps.rollout.serving.watchdog`), started with the canary,
checks it twice a second. When the deadline passes without a renewal (the step, its pod or the whole runner was
killed, or the step failed), it trips the guard and, under the plane's lock, puts 100% of traffic back on the
champion, takes the candidate out of the router, stops its server and clears the canary role
(`return_to_champion`, the same code the rollout abort runs); then, best effort, it releases the workflow's rollout
lease and tags the version `aborted: ...` in the registry (when MLflow is down the exit handler does that later).
Trip, restore and registry outcome are recorded in guard.json, the watchdog's lines in guard.log.

It never fights a live step: the trip is decided under the guard's own lock against the latest renewal, and a step
that renews after a trip is told so (`GuardTripped`) and stops without touching the router. The watchdog exits as
soon as the canary role ends (promote, abort, rollback) or another workflow's canary takes the model.

The deadline is `LLMRELEASE_CANARY_HEARTBEAT_S` seconds (default 30: three probe timeouts); after the last step
the canary hands over to the promote step with `HANDOFF_FACTOR` times the deadline (default 90 s). On a cluster
Argo Rollouts plays this part (an AnalysisRun that goes Degraded aborts the rollout), so only the local plane has
a guard.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from registry.errors import ReleaseError, SpecError
from registry.tags import CANARY_TAG, LEASE_TAG
from steps.core.proc import alive, started
from steps.rollout.serving.base import PlaneState, ServingPlane, model_version_of, server_name

__all__ = [
    "DEADLINE_ENV",
    "DEFAULT_DEADLINE_S",
    "HANDOFF_FACTOR",
    "CanaryGuard",
    "FileCanaryGuard",
    "GuardTripped",
    "GuardedPlane",
    "Heartbeat",
    "deadline_s",
    "read_heartbeat",
    "return_to_champion",
    "watch",
]

DEADLINE_ENV = "LLMRELEASE_CANARY_HEARTBEAT_S"
DEFAULT_DEADLINE_S = 30.0
HANDOFF_FACTOR = 3.0
_FILE, _LOCK, _LOG = "guard.json", "guard.lock", "guard.log"
_POLL_S = 0.5


class GuardTripped(ReleaseError):
    """The canary's heartbeat lapsed and the watchdog already put all traffic back on the champion."""


class Heartbeat(BaseModel):
    """The canary's heartbeat lease and what its watchdog did (the content of guard.json)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    workflow_uid: str
    candidate: str
    deadline_s: float
    expires_at: float
    renewed_at: float
    watchdog_pid: int | None = None
    watchdog_created: float | None = None
    tripped_at: float | None = None
    reason: str | None = None
    restored_at: float | None = None
    registry: str | None = None
    """What the watchdog did in the registry: "released", "not held", or the error it met."""


def deadline_s(environ: dict[str, str] | None = None) -> float:
    """The heartbeat deadline: LLMRELEASE_CANARY_HEARTBEAT_S (a positive number of seconds), default 30."""
    raw = (os.environ if environ is None else environ).get(DEADLINE_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_DEADLINE_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise SpecError(f"{DEADLINE_ENV}={raw!r} is not a positive number of seconds: set e.g. 30 or unset it")
    return value


def read_heartbeat(folder: Path) -> Heartbeat | None:
    """The heartbeat recorded in a model's plane folder, None when there is none (or it cannot be read)."""
    try:
        return Heartbeat.model_validate_json((folder / _FILE).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _guard_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / _LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(folder: Path, beat: Heartbeat) -> None:
    tmp = folder / f"{_FILE}.tmp"
    tmp.write_text(beat.model_dump_json(indent=2))
    os.replace(tmp, folder / _FILE)


def return_to_champion(plane: ServingPlane, state: PlaneState, canary: str) -> None:
    """All traffic on the champion, the canary out of the router and stopped, no canary role (inside `locked`).

    A first release (no champion) stops the router: nothing served before it, so nothing serves after it. A router
    that died is started again on its port with the champion alone; a champion server whose process died is
    started again (on a new port) before it takes the traffic back: all traffic on a dead server is an outage.
    Traffic that a rollback already moved to another version (all of it off champion and canary) stays there.
    """
    champion = state.servers.get(state.champion or "")
    if champion is not None and not plane.is_ready(state, champion):
        champion = plane.ensure_server(state, champion.version, Path(champion.model_dir))
    if state.router_port is not None and champion is not None and not _router_alive(plane, state):
        plane.ensure_router(state, champion)  # the router died: a fresh one on its port, all on the champion
    if state.router_port is not None:
        router = plane.router(state)
        if champion is None:
            router.stop()
            state.router_port = None
        elif not _taken_elsewhere(router.weights(), champion.version, canary):  # a rollback's traffic stays put
            router.add_backend(server_name(champion.version), champion.address)  # a restarted one is on a new port
            router.set_weights({server_name(champion.version): 100})  # traffic first, everything else after
            router.remove_backend(server_name(canary))
    if canary not in (state.champion, state.previous):
        plane.stop_server(state, canary)
    state.canary = None


def _taken_elsewhere(weights: dict[str, int], champion: str, canary: str) -> bool:
    """Whether all traffic is on versions other than the champion and the canary: a rollback moved it there."""
    live = {name for name, weight in weights.items() if weight > 0}
    return bool(live) and live.isdisjoint({server_name(champion), server_name(canary)})


@runtime_checkable
class CanaryGuard(Protocol):
    """The canary step's side of a guard: what `GuardedPlane.canary_guard` returns.

    `FileCanaryGuard` holds it in the plane folder of this machine; `steps.rollout.serving.remote.RemoteGuard` asks
    the local plane's service to (its watchdog then runs beside the service, outliving the step's pod).
    """

    def start(self) -> None:
        """Write a fresh heartbeat and start the watchdog (unless this workflow's is already running)."""
        ...

    def renew(self, *, factor: float = 1.0) -> None:
        """Push the deadline `factor` x deadline seconds ahead; GuardTripped when the watchdog already acted."""
        ...

    def lapse(self, why: str) -> None:
        """Expire the heartbeat now (the step is failing): the watchdog restores the champion at once."""
        ...


@runtime_checkable
class GuardedPlane(Protocol):
    """A serving plane that guards its canaries with a heartbeat (the local one; a cluster has Argo Rollouts)."""

    def canary_guard(self, model: str, workflow_uid: str, candidate: str, deadline: float) -> CanaryGuard:
        """The heartbeat guard of `workflow_uid`'s canary of `candidate`."""
        ...


def _router_alive(plane: ServingPlane, state: PlaneState) -> bool:
    try:
        plane.router(state)
    except ReleaseError:
        return False
    return True


class FileCanaryGuard:
    """The canary step's side, on the plane's machine: start the watchdog, renew the heartbeat, learn it tripped."""

    def __init__(self, folder: Path, home: Path, *, model: str, workflow_uid: str, candidate: str, deadline: float):
        """Guard `candidate`'s canary of `model` by `workflow_uid`; state in the plane folder `folder`."""
        self._folder, self._home = folder, home
        self._model, self._uid, self._candidate, self._deadline = model, workflow_uid, candidate, deadline

    def start(self) -> None:
        """Write a fresh heartbeat and start the watchdog (unless this workflow's is already running)."""
        with _guard_lock(self._folder):
            now = time.time()
            old = read_heartbeat(self._folder)
            beat = Heartbeat(
                model=self._model,
                workflow_uid=self._uid,
                candidate=self._candidate,
                deadline_s=self._deadline,
                expires_at=now + self._deadline,
                renewed_at=now,
            )
            if old is not None and old.workflow_uid == self._uid and old.tripped_at is None:
                beat.watchdog_pid, beat.watchdog_created = old.watchdog_pid, old.watchdog_created
            if not alive(beat.watchdog_pid, beat.watchdog_created):
                beat.watchdog_pid = self._spawn()
                beat.watchdog_created = started(beat.watchdog_pid)
            _write(self._folder, beat)

    def _spawn(self) -> int:
        root = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        argv = [sys.executable, "-m", "steps.rollout.serving.watchdog", str(self._home), self._model, self._uid]
        with (self._folder / _LOG).open("ab") as log:
            process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return process.pid

    def renew(self, *, factor: float = 1.0) -> None:
        """Push the deadline `factor` x deadline seconds ahead; GuardTripped when the watchdog already acted.

        A watchdog that is gone (killed) is started again here, so it is back within one analysis tick.
        """
        with _guard_lock(self._folder):
            beat = read_heartbeat(self._folder)
            if beat is None or beat.workflow_uid != self._uid:
                raise GuardTripped(
                    f"the canary guard of {self._model} for workflow {self._uid} is gone ({self._folder / _FILE}): "
                    "another rollout took the model or its serving state was cleared; start a new release"
                )
            if beat.tripped_at is not None:
                raise GuardTripped(f"canary guard tripped: {beat.reason}")
            now = time.time()
            beat.renewed_at, beat.expires_at = now, now + self._deadline * factor
            if not alive(beat.watchdog_pid, beat.watchdog_created):  # it was killed: a fresh one watches on
                beat.watchdog_pid = self._spawn()
                beat.watchdog_created = started(beat.watchdog_pid)
            _write(self._folder, beat)

    def lapse(self, why: str) -> None:
        """Expire the heartbeat now (the step is failing): the watchdog restores the champion at once."""
        with _guard_lock(self._folder):
            beat = read_heartbeat(self._folder)
            if beat is not None and beat.workflow_uid == self._uid and beat.tripped_at is None:
                beat.expires_at, beat.reason = time.time(), why[:500]
                _write(self._folder, beat)


def _trip(folder: Path, uid: str) -> Heartbeat | None:
    """Mark the heartbeat tripped when it lapsed (under the guard lock); the tripped beat, else None."""
    with _guard_lock(folder):
        beat = read_heartbeat(folder)
        now = time.time()
        if beat is None or beat.workflow_uid != uid or beat.tripped_at is not None or now <= beat.expires_at:
            return None
        lapse = f"{now - beat.renewed_at:.1f}s since the last renewal, deadline {beat.deadline_s:g}s"
        beat.tripped_at = now
        beat.reason = f"heartbeat lapsed ({beat.reason or lapse}): the canary step stopped reporting"
        _write(folder, beat)
        return beat


def _record(folder: Path, **fields: Any) -> None:
    with _guard_lock(folder):
        beat = read_heartbeat(folder)
        if beat is not None:
            _write(folder, beat.model_copy(update=fields))


def _release_lease(model: str, beat: Heartbeat) -> str:
    """Release the workflow's rollout lease and tag the version aborted; what happened, one line."""
    from registry.facade import ModelRegistry

    try:
        registry = ModelRegistry.from_env()
        raw = registry.model_tags(model).get(LEASE_TAG)
        if not raw or json.loads(raw).get("workflow_uid") != beat.workflow_uid:
            return "not held"
        registry.delete_model_tag(model, LEASE_TAG)
        registry.tag_version(model, model_version_of(beat.candidate), CANARY_TAG, f"aborted: {beat.reason}"[:5000])
    except Exception as e:  # a detached watchdog has nobody to raise to: record it, the exit handler retries
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return "released"


def watch(local: Any, model: str, uid: str, *, poll_s: float = _POLL_S) -> str:
    """The watchdog loop: wait for the canary to end or its heartbeat to lapse; return what ended it.

    Args:
        local: the `LocalServing` (anything with `model_dir`, `state`, `locked`, `router`, `stop_server`).
        model: the registered model whose canary is watched.
        uid: the workflow whose canary is watched.
        poll_s: seconds between checks.
    """
    folder = local.model_dir(model)
    while True:
        beat = read_heartbeat(folder)
        if beat is None or beat.workflow_uid != uid or beat.tripped_at is not None:
            return "the heartbeat is gone or belongs to another workflow"
        if local.state(model).canary != beat.candidate:
            return f"the canary of version {beat.candidate} ended (promoted, aborted or rolled back)"
        tripped = _trip(folder, uid)
        if tripped is not None:
            return _restore(local, folder, model, tripped)
        time.sleep(poll_s)


def _restore(local: Any, folder: Path, model: str, beat: Heartbeat) -> str:
    print(f"guard: {model} version {beat.candidate}: {beat.reason}; restoring the champion", flush=True)
    try:
        with local.locked(model) as state:
            ended = state.canary != beat.candidate  # a rollback or abort ended it while we waited for the lock
            if not ended:
                return_to_champion(local, state, beat.candidate)
    except ReleaseError as e:
        _record(folder, registry=f"not restored: {e}")
        return f"could not restore the champion: {e}"
    if ended:
        _record(folder, registry="not held: the canary had already ended")
        return f"the canary of version {beat.candidate} had already ended (rolled back or aborted): nothing to do"
    _record(folder, restored_at=time.time())
    outcome = _release_lease(model, beat)
    _record(folder, registry=outcome)
    return f"aborted version {beat.candidate}: all traffic on the champion; registry: {outcome}"
