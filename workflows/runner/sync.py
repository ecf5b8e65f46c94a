"""Argo's `synchronization` (mutex and semaphore, workflow and template level) across runner processes.

Argo's controller keeps locks in memory (or a database); the local runner keeps them as file locks (fcntl
`flock`) under `<LLMRELEASE_HOME>/locks/`, so two `llmrelease run` processes on one machine (and two nodes of one
run) exclude each other. A mutex is one lock file; a semaphore of limit N is N slot files, whichever is free.
A semaphore's limit is read from its ConfigMap key in the cluster config (`--cluster-config`), as Argo reads it.
While waiting, the waiter shows Argo's message: "Waiting for <namespace>/Mutex/<name> lock. Lock status: 0/1".
Locks die with the process that holds them, except a workflow-level lock of a workflow that returns suspended:
it is parked (a note naming the run folder next to the slot), and nobody else takes that slot while the workflow
is still Running, as Argo keeps a suspended workflow's lock; resuming it to its end, stop or terminate frees it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError
from registry.settings import llmrelease_home
from workflows.argo.expressions import substitute
from workflows.runner.cluster import ClusterConfig

__all__ = ["Lock", "Held", "LockAbandoned", "locks_of", "acquire", "parked_by"]

_POLL_S = 0.05
_PARKED = ".parked"  # next to a slot file: the run folder of the suspended workflow that keeps it


@dataclass(frozen=True)
class Lock:
    """One mutex or semaphore: Argo's key (`local/Mutex/m`, `local/ConfigMap/cm/key`) and its limit."""

    key: str
    limit: int

    @property
    def folder(self) -> Path:
        """Where its slot files lie."""
        return llmrelease_home() / "locks" / self.key

    def try_take(self, owner: str = "") -> tuple[int, Path] | None:
        """An open, locked slot (descriptor, path), or None when all `limit` slots are held.

        A slot parked by a suspended workflow other than `owner` (see `Held.park`) is held even with no process.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        for slot in range(self.limit):
            path = self.folder / f"slot-{slot}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            parked = parked_by(path)
            if parked and parked != owner:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                continue
            return fd, path
        return None

    def waiting_message(self) -> str:
        """Argo's Pending message (workflow/sync/semaphore.go); every slot is held while one waits."""
        return f"Waiting for {self.key} lock. Lock status: 0/{self.limit}"


def locks_of(
    sync: Mapping[str, Any] | None,
    cluster: ClusterConfig,
    namespace: str,
    where: str,
    scope: Mapping[str, str] | None = None,
) -> list[Lock]:
    """The locks a `synchronization` block asks for: `mutex`, `mutexes`, `semaphore`, `semaphores`.

    Names take Argo's variables, as the controller substitutes them before locking: `{{workflow.parameters.*}}`
    at workflow level, `{{inputs.parameters.*}}` too at template level (`scope`), e.g. one mutex per model.

    Raises:
        WorkflowError: A semaphore's ConfigMap or key is missing, or its value is not a positive integer;
            a `database` lock (needs Argo's database).
    """
    if not sync:
        return []
    mutexes = [*([sync["mutex"]] if sync.get("mutex") else []), *(sync.get("mutexes") or [])]
    semaphores = [*([sync["semaphore"]] if sync.get("semaphore") else []), *(sync.get("semaphores") or [])]
    found = []
    for mutex in mutexes:
        _no_database(mutex, where)
        name = substitute(str(mutex["name"]), scope or {}, where=f"{where}: mutex name")
        found.append(Lock(f"{mutex.get('namespace') or namespace}/Mutex/{name}", 1))
    for sem in semaphores:
        _no_database(sem, where)
        ref = sem.get("configMapKeyRef") or {}
        if not ref.get("name") or not ref.get("key"):
            raise WorkflowError(f"{where}: semaphore needs configMapKeyRef {{name, key}}")
        raw = cluster.key("configmap", str(ref["name"]), str(ref["key"]))
        try:
            limit = int(str(raw).strip())
        except ValueError:
            limit = 0
        if limit < 1:
            raise WorkflowError(
                f"{where}: semaphore ConfigMap {ref['name']} key {ref['key']} is {raw!r}; set a positive integer"
            )
        found.append(Lock(f"{sem.get('namespace') or namespace}/ConfigMap/{ref['name']}/{ref['key']}", limit))
    return sorted(set(found), key=lambda lock: lock.key)  # one order everywhere: no deadlock between waiters


def _no_database(item: Mapping[str, Any], where: str) -> None:
    if item.get("database"):
        raise WorkflowError(f"{where}: a database lock needs Argo's synchronization database; use a plain one")


def parked_by(slot: Path) -> str:
    """The run folder of the suspended workflow that parked `slot` while still suspended (Running), else ""."""
    note = slot.with_name(slot.name + _PARKED)
    try:
        owner = note.read_text().strip()
        phase = json.loads((Path(owner) / "status.json").read_text())["status"]["phase"]
    except (OSError, ValueError, KeyError):
        return ""
    return owner if phase in ("Running", "Pending") else ""


class LockAbandoned(WorkflowError):
    """A waiter gave up its lock wait: the workflow was stopped or terminated, or its deadline passed."""


class Held:
    """Locks taken (in key order) until `release` or `park`; `waiting(message)` is told while one is busy.

    `abandon()` is asked while waiting: a non-empty answer (e.g. "Stopped with strategy 'Stop'") releases what was
    taken and raises `LockAbandoned` with it, as Argo fails a node still Pending on a lock when the workflow stops.
    """

    def __init__(
        self,
        locks: list[Lock],
        waiting: Callable[[str], None],
        owner: str = "",
        abandon: Callable[[], str] = lambda: "",
    ) -> None:
        self.owner = owner
        self.slots: list[tuple[int, Path]] = []
        for lock in locks:
            taken = lock.try_take(owner)
            if taken is None:
                waiting(lock.waiting_message())
            while taken is None:
                why = abandon()
                if why:
                    self.release()
                    raise LockAbandoned(why)
                time.sleep(_POLL_S)
                taken = lock.try_take(owner)
            self.slots.append(taken)

    def release(self) -> None:
        """Unlock every lock, parked ones included (a dead process releases its unparked locks too)."""
        for fd, path in self.slots:
            note = path.with_name(path.name + _PARKED)
            if self.owner and note.is_file() and note.read_text().strip() == self.owner:
                note.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.slots = []

    def park(self) -> None:
        """Keep every lock for `owner` (a suspended workflow's run folder) after this process ends.

        As Argo keeps a suspended workflow's lock: until the workflow ends (resumed to its end, stopped, terminated).
        """
        for _, path in self.slots:
            if self.owner:
                path.with_name(path.name + _PARKED).write_text(self.owner)
        self.owner = ""  # release() below must keep the notes
        self.release()


def acquire(
    locks: list[Lock], waiting: Callable[[str], None], owner: str = "", abandon: Callable[[], str] = lambda: ""
) -> Held:
    """Take every lock in `locks` for `owner` (a run folder), waiting (and telling `waiting` why) while one is busy.

    Busy: held by a live process, or parked by another suspended workflow (`Held.park`).

    Raises:
        LockAbandoned: `abandon()` gave a reason to stop waiting (nothing stays taken).
    """
    return Held(locks, waiting, owner, abandon)
