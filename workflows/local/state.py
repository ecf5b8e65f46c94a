"""What `llmrelease local up` started, and how to tell whether it still runs: the state file and process groups.

The state lives in `<LLMRELEASE_HOME>/local/state.json`: the ports chosen at the first `up` (kept across `down`,
so the written config stays valid), the local credentials, and one record per started service (its pid, which is
also its process group, the process's start time so a recycled pid is never taken for it, URL and log). Every
service runs in a process group of its own: stopping it signals the whole group (Ray's raylet and workers, MLflow's
uvicorn workers) and waits until no process of the group is left.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "ProfileState",
    "ServiceRecord",
    "group_members",
    "is_running",
    "locked",
    "process_start",
    "stop_group",
]


@dataclass(frozen=True)
class ServiceRecord:
    """One started service: its process (and process group) id, that process's start time, URL and log."""

    name: str
    pid: int
    started: int  # /proc/<pid>/stat start time (clock ticks after boot): tells a recycled pid apart
    url: str
    log: str


@dataclass
class ProfileState:
    """The local profile's state file: ports, credentials, and the services it started."""

    path: Path
    ports: dict[str, int] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ProfileState:
        """The state at `path`; an empty one when there is no file yet (or it is unreadable: nothing is known)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(path)
        services = {name: ServiceRecord(**record) for name, record in (raw.get("services") or {}).items()}
        return cls(path, dict(raw.get("ports") or {}), dict(raw.get("credentials") or {}), services)

    def save(self) -> None:
        """Write the state (owner-only: it holds the local credentials), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "ports": self.ports,
            "credentials": self.credentials,
            "services": {name: asdict(record) for name, record in self.services.items()},
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        temporary.chmod(0o600)
        temporary.replace(self.path)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing): one `up`/`down` at a time per home."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state is [0], pgid [2], start time [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_start(pid: int) -> int:
    """The start time of process `pid` (clock ticks after boot); 0 when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else 0


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def is_running(record: ServiceRecord) -> bool:
    """Whether the service's own process is alive: same pid, same start time, not a zombie."""
    fields = _stat_fields(record.pid)
    return bool(fields) and fields[0] != "Z" and int(fields[19]) == record.started  # type: ignore[index]


def stop_group(record: ServiceRecord, grace: float = 15.0) -> bool:
    """Stop the service's process group: SIGTERM, then SIGKILL after `grace` seconds.

    Nothing is signalled unless the recorded process is still the one that was started, or its group outlived it
    (Linux reuses no pid while its group has members, so a group whose leader is gone is still the service's).

    Returns:
        True when a process was signalled; False when nothing of it was running.
    """
    members = group_members(record.pid)
    if not is_running(record) and (not members or record.pid in members):
        return False
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(record.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(record.pid):
        _signal_group(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while group_members(record.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
