"""The runner's record of a workflow run, shaped like Argo's `status.nodes`, and its `argo get`-style tree."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["Node", "NodeBook", "FAILED", "POD_IP", "failures", "format_tree", "iso"]

FAILED = frozenset({"Failed", "Error"})
POD_IP = "127.0.0.1"  # every local pod's IP: pods share this machine's network
_SCOPES = frozenset({"Steps", "DAG"})  # the nodes a child's boundaryID names (Argo)
_ICON = {"Succeeded": "✔", "Failed": "✖", "Error": "⚠", "Skipped": "○", "Omitted": "○", "Running": "●"}


def iso(ts: float | None) -> str | None:
    """A timestamp as Argo writes it (RFC 3339, UTC, seconds), None for None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Node:
    """One node of the run: a pod, a DAG/steps invocation, a retry group, a loop group, a suspend, a skip."""

    id: str
    name: str
    display_name: str
    type: str
    template_name: str
    boundary_id: str = ""
    phase: str = "Pending"
    message: str = ""
    started: float | None = None
    finished: float | None = None
    children: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    result: str | None = None
    exit_code: int | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    scheduling: dict[str, Any] = field(default_factory=dict)
    memoization: dict[str, Any] = field(default_factory=dict)  # Argo's memoizationStatus {hit, key, cacheName}
    daemoned: bool = False  # a daemon pod that is ready and runs until its scope ends

    @property
    def duration(self) -> float:
        """Seconds from start to finish (or to now while running)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def to_status(self) -> dict[str, Any]:
        """The Argo `status.nodes[id]` shape."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "displayName": self.display_name,
            "type": self.type,
            "templateName": self.template_name,
            "phase": self.phase,
            "startedAt": iso(self.started),
            "finishedAt": iso(self.finished),
        }
        if self.boundary_id:
            out["boundaryID"] = self.boundary_id
        if self.message:
            out["message"] = self.message
        if self.daemoned:
            out["daemoned"], out["podIP"] = True, POD_IP
        if self.children:
            out["children"] = list(self.children)
        outputs: dict[str, Any] = {}
        if self.parameters:
            outputs["parameters"] = [{"name": k, "value": v} for k, v in self.parameters.items()]
        if self.result is not None:
            outputs["result"] = self.result
        if self.exit_code is not None:
            outputs["exitCode"] = str(self.exit_code)
        if self.artifacts:
            outputs["artifacts"] = [{"name": k, "path": v} for k, v in self.artifacts.items()]
        if outputs:
            out["outputs"] = outputs
        if self.scheduling:
            out["recordedSchedulingFields"] = self.scheduling
        if self.memoization:
            out["memoizationStatus"] = self.memoization
        return out


class NodeBook:
    """Thread-safe store of the run's nodes; prints a line as each node finishes."""

    def __init__(self, workflow_name: str, *, echo: bool, first_seq: int = 0) -> None:
        self.workflow_name = workflow_name
        self.echo = echo
        self._nodes: dict[str, Node] = {}
        self._lock = threading.Lock()
        self._seq = first_seq  # a resumed run numbers its new nodes after the saved ones
        self.on_finish: Callable[[Node], None] | None = None  # the runner saves its state after each node

    def adopt(self, node: Node, parent: Node | None) -> Node:
        """Add a node saved by an earlier process of this run (a resumed workflow), keeping its id."""
        with self._lock:
            self._nodes[node.id] = node
            if parent is not None and node.id not in parent.children:
                parent.children.append(node.id)
        return node

    def new(self, parent: Node | None, display_name: str, type_: str, template: str, boundary: str = "") -> Node:
        """Create a node under `parent` (None: the root)."""
        with self._lock:
            self._seq += 1
            node_id = f"{self.workflow_name}-{self._seq}"
            name = display_name if parent is None else f"{parent.name}.{display_name}"
            if not boundary and parent is not None:
                boundary = parent.id if parent.type in _SCOPES else parent.boundary_id
            node = Node(node_id, name, display_name, type_, template, boundary_id=boundary)
            self._nodes[node_id] = node
            if parent is not None:
                parent.children.append(node_id)
            return node

    def start(self, node: Node) -> None:
        """Mark `node` Running."""
        node.phase, node.started = "Running", time.time()

    def finish(self, node: Node, phase: str, message: str = "") -> Node:
        """Mark `node` terminal and print its line."""
        node.phase, node.message = phase, message or node.message
        if node.started is None:
            node.started = time.time()
        node.finished = time.time()
        if self.echo and node.type in ("Pod", "Suspend", "Skipped"):
            depth = node.name.count(".")
            icon = _ICON.get(phase, "?")
            msg = f"  {node.message}" if node.message else ""
            print(
                f"{'  ' * depth}{icon} {node.display_name} ({node.template_name}) {phase} {node.duration:.1f}s{msg}",
                flush=True,
            )
            said = [line for line in (node.result or "").splitlines() if line.strip() not in ("", "null")]
            if said:
                print(f"{'  ' * depth}    {said[-1][:160]}", flush=True)
        if self.on_finish is not None:
            self.on_finish(node)
        return node

    def get(self, node_id: str) -> Node:
        """The node with that id."""
        return self._nodes[node_id]

    def all(self) -> list[Node]:
        """Every node, in creation order."""
        with self._lock:
            return list(self._nodes.values())


def format_tree(book: NodeBook, root: Node) -> str:
    """An `argo get`-style tree: step, template, phase, duration, message."""
    lines = [f"{'STEP':<44} {'TEMPLATE':<22} {'PHASE':<10} {'DURATION':>8}  MESSAGE"]

    def walk(node: Node, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        icon = _ICON.get(node.phase, "◷")
        label = f"{prefix}{branch}{icon} {node.display_name}"
        lines.append(f"{label:<44} {node.template_name:<22} {node.phase:<10} {node.duration:>7.1f}s  {node.message}")
        kids = [book.get(c) for c in node.children]
        for i, kid in enumerate(kids):
            walk(kid, prefix + ("" if top else ("   " if last else "│  ")), i == len(kids) - 1, False)

    walk(root, "", True, True)
    return "\n".join(lines)


def failures(book: NodeBook) -> list[dict[str, Any]]:
    """Argo's `workflow.failures`: every failed or errored pod, as the exit handler sees it."""
    return [
        {
            "displayName": n.display_name,
            "message": n.message,
            "templateName": n.template_name,
            "phase": n.phase,
            "podName": n.id,
            "finishedAt": iso(n.finished),
        }
        for n in book.all()
        if n.phase in FAILED and n.type == "Pod"
    ]
