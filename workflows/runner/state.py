"""A local workflow's state on disk, so a suspended workflow can be listed, shown, resumed, stopped or terminated.

Each run folder (`<runs dir>/<name>/`) holds `status.json` (Argo's shape: what `llmrelease get` shows) and
`state.json` (what the runner needs to continue: the workflow spec and templates it ran, its globals, options
and every node). Both are rewritten after each node finishes, atomically. Resuming replays the workflow with the
saved nodes: a finished leaf is taken as it was (never re-run), a suspend node is resumed, the rest runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError
from workflows.runner.nodes import Node

__all__ = ["SavedRun", "last_seq", "load_saved", "write_json", "list_runs", "node_from_dict", "requested_shutdown"]

STATE = "state.json"
STATUS = "status.json"


@dataclass
class SavedRun:
    """What `state.json` holds."""

    name: str
    uid: str
    workflow: dict[str, Any]  # stem, spec, metadata
    refs: dict[str, Any]  # WorkflowTemplates by name, as resolved when the run started
    globals: dict[str, str]
    options: dict[str, Any]  # isolation, cluster_config
    started: float
    nodes: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "Running"

    def saved_nodes(self) -> dict[str, Node]:
        """The saved nodes by id."""
        return {n["id"]: node_from_dict(n) for n in self.nodes}


def node_from_dict(data: Mapping[str, Any]) -> Node:
    """A `Node` back from its `dataclasses.asdict` form."""
    names = {f.name for f in dataclasses.fields(Node)}
    return Node(**{k: v for k, v in data.items() if k in names})


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def load_saved(runs_dir: Path, name: str) -> SavedRun:
    """The saved state of workflow `name` under `runs_dir`.

    Raises:
        WorkflowError: No such run, or it was not saved by a runner that can resume it.
    """
    path = runs_dir / name / STATE
    if not path.is_file():
        known = ", ".join(r["name"] for r in list_runs(runs_dir)[:5]) or "none"
        raise WorkflowError(f"workflow {name}: not found under {runs_dir}/ (recent: {known}); see `llmrelease list`")
    data = json.loads(path.read_text())
    return SavedRun(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(SavedRun)}})


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run under `runs_dir`, newest first: name, phase, startedAt, finishedAt, message."""
    runs = []
    for status_file in runs_dir.glob(f"*/{STATUS}") if runs_dir.is_dir() else []:
        try:
            doc = json.loads(status_file.read_text())
        except (OSError, ValueError):
            continue
        status = doc.get("status", {})
        runs.append(
            {
                "name": doc.get("metadata", {}).get("name", status_file.parent.name),
                "phase": status.get("phase", "Unknown"),
                "startedAt": status.get("startedAt"),
                "finishedAt": status.get("finishedAt"),
                "message": status.get("message", ""),
                "mtime": status_file.stat().st_mtime,
            }
        )
    return sorted(runs, key=lambda r: str(r["startedAt"] or ""), reverse=True)


def last_seq(nodes: Mapping[str, Node]) -> int:
    """The highest node number of a saved run (`<name>-<n>`), so new nodes never reuse an id or a folder."""
    numbers = [int(i.rsplit("-", 1)[-1]) for i in nodes if i.rsplit("-", 1)[-1].isdigit()]
    return max(numbers, default=0)


def requested_shutdown(run_dir: Path) -> str:
    """The strategy ("Stop" or "Terminate") when `llmrelease stop|terminate` asked this running workflow to end."""
    request = run_dir / "shutdown"
    return request.read_text().strip() if request.is_file() else ""
