"""A template's `sidecars`: containers that run alongside the main container and are killed when it ends.

As in an Argo pod, each sidecar starts with the main container (its own image, `env`, `volumeMounts`, or the
main container's with `mirrorVolumeMounts`), shares the pod's network (the host's, locally: the main container
reaches it at 127.0.0.1) and is killed once the main container has ended (SIGTERM, then SIGKILL). As Argo's
controller judges the pod (inferFailedReason), a sidecar killed that way (exit code 137/143) is ignored; one that
cannot start or exits non-zero by itself fails a pod whose main container succeeded, with one line naming it:
`NAME: Error (exit code N): <its last stderr line>`. Logs: `<node dir>/sidecars/<name>/`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from registry.errors import WorkflowError
from workflows.runner import process

__all__ = ["Sidecars"]

_KILLED = frozenset({137, 143})  # SIGKILL / SIGTERM: the executor stopped it, not a failure


class _Prepared(Protocol):
    """What `workflows.runner.pods.prepare` returns, as far as a sidecar needs it."""

    @property
    def argv(self) -> list[str]:
        """The command line."""
        ...

    @property
    def env(self) -> dict[str, str]:
        """The environment."""
        ...

    @property
    def cleanup(self) -> Callable[[], None]:
        """Removes its private files."""
        ...

    @property
    def missing(self) -> str:
        """The command, when the pod has no such program."""
        ...


@dataclass
class _Running:
    name: str
    logs: Path
    proc: subprocess.Popen[bytes] | None
    cleanup: Callable[[], None]
    problem: str = ""  # why it never started


class Sidecars:
    """The sidecars of one pod: started one by one, stopped together."""

    def __init__(self) -> None:
        """No sidecar running yet."""
        self._running: list[_Running] = []

    def start(self, name: str, logs: Path, prepare: Callable[[], _Prepared]) -> None:
        """Prepare and start sidecar `name`; one that cannot start is kept for `stop` to report, as the kubelet does.

        Raises:
            WorkflowError: Its configuration is missing (a ConfigMap, Secret, volume): the pod cannot be created.
        """
        try:
            prepared = prepare()
        except WorkflowError as e:
            raise type(e)(f"sidecar {name}: {e}") from e
        try:
            if prepared.missing:
                raise FileNotFoundError(2, "No such file or directory", prepared.missing)
            proc = process.start(prepared.argv, prepared.env, logs)
        except OSError as e:
            program = prepared.missing or prepared.argv[0]
            why = f"{name}: StartError (exit code 128): cannot start {program}: {e.strerror}"
            self._running.append(_Running(name, logs, None, prepared.cleanup, why))
            return
        self._running.append(_Running(name, logs, proc, prepared.cleanup))

    def stop(self) -> str:
        """Kill every sidecar still running; the first failure of a sidecar (one line), or ""."""
        problems = []
        for car in self._running:
            try:
                problems.append(car.problem or _verdict(car))
            finally:
                car.cleanup()
        self._running = []
        return next((p for p in problems if p), "")


def _verdict(car: _Running) -> str:
    """An empty string when the sidecar ran fine or was killed by us, else Argo's line for its exit."""
    if car.proc is None:
        return ""
    if car.proc.poll() is None:
        process.kill_group(car.proc)
        return ""
    code = process.exit_status(car.proc)
    if code == 0 or code in _KILLED:
        return ""
    tail = (car.logs / "stderr").read_text(errors="replace").strip().splitlines()
    return f"{car.name}: Error (exit code {code})" + (f": {tail[-1][:300]}" if tail else "")
