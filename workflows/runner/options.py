"""What `llmrelease run` is given (RunOptions), what it returns (RunResult), and what it refuses up front."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunOptions", "RunResult", "unsupported"]

_REFUSED_TEMPLATE = ("resource", "data", "plugin")


@dataclass(frozen=True)
class RunOptions:
    """What the user gave `llmrelease run`."""

    parameters: Mapping[str, str] = field(default_factory=dict)
    resume: frozenset[str] = frozenset()
    supplied: Mapping[str, str] = field(default_factory=dict)
    runs_dir: Path = Path(".llmrelease/runs")
    echo: bool = True
    isolation: str = "none"  # "bwrap": each pod in bubblewrap (workflows/runner/sandbox.py); "none": a subprocess
    cluster_config: Path | None = None  # a folder of ConfigMap/Secret YAML (`--cluster-config DIR`)
    resume_all: bool = False  # resume every suspend node (`llmrelease resume NAME` without --node)
    shutdown: str = ""  # "Stop" (exit handlers run) or "Terminate" (they do not), as `argo stop|terminate`


@dataclass(frozen=True)
class RunResult:
    """The outcome: Argo-shaped status and where the logs are."""

    name: str
    phase: str
    message: str
    run_dir: Path
    status: dict[str, Any]
    tree: str


def unsupported(spec: Mapping[str, Any]) -> list[str]:
    """Fields the local runner cannot honour, each as 'where: field', found before anything runs."""
    found = [f"spec.{key}" for key in ("hostNetwork", "hooks") if spec.get(key)]  # spec.hooks: use spec.onExit
    for tmpl in spec.get("templates", []):
        where = f"template {tmpl.get('name')}"
        found += [f"{where}: {key}" for key in _REFUSED_TEMPLATE if tmpl.get(key)]
        body = tmpl.get("container") or tmpl.get("script") or {}
        found += [f"{where}: {key}" for key in ("volumeDevices",) if body.get(key)]
        for task in tmpl.get("dag", {}).get("tasks", []):
            found += _hooks(f"{where}: task {task.get('name')}", task)
        for step in [s for group in tmpl.get("steps") or [] for s in group or [] if isinstance(s, Mapping)]:
            found += _hooks(f"{where}: step {step.get('name')}", step)
    return found


def _hooks(where: str, call: Mapping[str, Any]) -> list[str]:
    """Lifecycle hooks the runner cannot run: any but `exit`, and an `exit` hook with an `expression`."""
    hooks = call.get("hooks") or {}
    found = [f"{where}: hooks.{name}" for name in hooks if name != "exit"]
    if (hooks.get("exit") or {}).get("expression"):
        found.append(f"{where}: hooks.exit.expression")
    return found
