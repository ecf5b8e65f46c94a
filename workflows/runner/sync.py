"""Argo's `synchronization` (mutex and semaphore, workflow and template level) across runner processes.

Argo's controller keeps locks in memory (or a database); the local runner keeps them as file locks (fcntl
`flock`) under `<LLMRELEASE_HOME>/locks/`, so two `llmrelease run` processes on one machine (and two nodes of one
run) exclude each other. A mutex is one lock file; a semaphore of limit N is N slot files, whichever is free.
A semaphore's limit is read from its ConfigMap key in the cluster config (`--cluster-config`), as Argo reads it.
While waiting, the waiter shows Argo's message: "Waiting for <namespace>/Mutex/<name> lock. Lock status: 0/1".
Locks die with the process that holds them (Argo keeps a suspended workflow's lock; the runner cannot).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError
from registry.settings import llmrelease_home
from workflows.runner.cluster import ClusterConfig

__all__ = ["Lock", "Held", "locks_of", "acquire"]

_POLL_S = 0.05


@dataclass(frozen=True)
class Lock:
    """One mutex or semaphore: Argo's key (`local/Mutex/m`, `local/ConfigMap/cm/key`) and its limit."""

    key: str
    limit: int

    @property
    def folder(self) -> Path:
        """Where its slot files lie."""
        return llmrelease_home() / "locks" / self.key

    def try_take(self) -> int | None:
        """An open, locked slot file descriptor, or None when all `limit` slots are held."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for slot in range(self.limit):
            fd = os.open(self.folder / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        return None

    def waiting_message(self) -> str:
        """Argo's Pending message (workflow/sync/semaphore.go); every slot is held while one waits."""
        return f"Waiting for {self.key} lock. Lock status: 0/{self.limit}"


def locks_of(sync: Mapping[str, Any] | None, cluster: ClusterConfig, namespace: str, where: str) -> list[Lock]:
    """The locks a `synchronization` block asks for: `mutex`, `mutexes`, `semaphore`, `semaphores`.

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
        found.append(Lock(f"{mutex.get('namespace') or namespace}/Mutex/{mutex['name']}", 1))
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


class Held:
    """Locks taken (in key order) until `release`; `waiting(message)` is told while one is busy."""

    def __init__(self, locks: list[Lock], waiting: Callable[[str], None]) -> None:
        self.fds: list[int] = []
        for lock in locks:
            fd = lock.try_take()
            if fd is None:
                waiting(lock.waiting_message())
            while fd is None:
                time.sleep(_POLL_S)
                fd = lock.try_take()
            self.fds.append(fd)

    def release(self) -> None:
        """Unlock every lock (a dead process releases them too)."""
        for fd in self.fds:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.fds = []


def acquire(locks: list[Lock], waiting: Callable[[str], None]) -> Held:
    """Take every lock in `locks`, waiting (and telling `waiting` why) while one is held elsewhere."""
    return Held(locks, waiting)
