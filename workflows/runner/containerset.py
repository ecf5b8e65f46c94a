"""A `containerSet` template: several containers of one pod, ordered by their `dependencies`, sharing volumes.

As Argo's controller (container_set_template.go) and executor (the emissary) run it:
- the pod node gets one child node of type `Container` per container, named `<pod node>.<container>`; a container
  with `dependencies` is a child of each container it depends on;
- a container starts once every container it depends on has exited 0; when one of them did not, it never runs
  and ends Error `NAME: Error (exit code 64): dependency "DEP" exited with non-zero code: N` (the emissary's code);
- each container is a process of its own image with its own `volumeMounts` plus the set's, so they share files
  through volumes only (an `emptyDir` is one folder for the whole pod);
- the pod is Succeeded when every container exited 0, else Failed with the first failed container's line
  (`NAME: Error (exit code N): ...`, containers in declared order); its `outputs.result`, exit code, output
  parameters and artifacts come from the container named `main`.
Logs: `<node dir>/containers/<name>/`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from registry.errors import WorkflowError
from workflows.runner.nodes import Node
from workflows.runner.pods import PodSpec, Prepared, collect_outputs, run_container
from workflows.runner.volumes import InitContainer

__all__ = ["run_container_set"]

_EMISSARY_ERROR = 64  # the emissary's own exit code: the container could not run


class Book(Protocol):
    """What a containerSet needs of the run's nodes (`workflows.runner.nodes.NodeBook`)."""

    def new(self, parent: Node | None, display_name: str, type_: str, template: str, boundary: str = "") -> Node:
        """Create a node under `parent`."""
        ...

    def start(self, node: Node) -> None:
        """Mark `node` Running."""
        ...

    def finish(self, node: Node, phase: str, message: str = "") -> Node:
        """Mark `node` terminal."""
        ...


def run_container_set(spec: PodSpec, node: Node, book: Book) -> tuple[str, str]:
    """Run the set's containers in dependency order (in parallel where they may); returns the pod's (phase, message).

    Raises:
        WorkflowError: A container depends on a container the set does not have.
    """
    containers = {str(c.container.get("name")): c for c in spec.containers}
    for name, item in containers.items():
        unknown = [str(d) for d in item.container.get("dependencies") or [] if str(d) not in containers]
        if unknown:
            raise WorkflowError(
                f"template {spec.template.get('name')}: containerSet container {name} depends on unknown "
                f"container(s) {', '.join(unknown)}; name one of {', '.join(containers)}"
            )
    kids = _child_nodes(node, containers, book, str(spec.template.get("name", "")))
    codes: dict[str, int] = {}
    done = {name: threading.Event() for name in containers}
    later: list[Prepared] = []  # main's files, read once every container has ended (Argo's wait container)

    def run(name: str) -> None:
        try:
            codes[name] = _run_one(spec, node, containers[name], kids[name], book, codes, done, later)
        finally:
            done[name].set()

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [kids[name] for name in containers if codes.get(name, 1) != 0]
    problem = next((collect_outputs(spec, node, files) for files in later), "")  # cleans up main's files
    if failed:
        return "Failed", failed[0].message
    return ("Error", problem) if problem else ("Succeeded", "")


def _child_nodes(node: Node, containers: Mapping[str, InitContainer], book: Book, template: str) -> dict[str, Node]:
    """One `Container` node per container, Pending; a container with dependencies hangs under each of them."""
    kids = {name: book.new(node, name, "Container", template) for name in containers}
    for name, item in containers.items():
        deps = [str(d) for d in item.container.get("dependencies") or []]
        if deps:
            node.children.remove(kids[name].id)
            for dep in deps:
                kids[dep].children.append(kids[name].id)
    return kids


def _run_one(
    spec: PodSpec,
    pod: Node,
    item: InitContainer,
    kid: Node,
    book: Book,
    codes: Mapping[str, int],
    done: Mapping[str, threading.Event],
    later: list[Prepared],
) -> int:
    """Wait for the container's dependencies, run it, and finish its node; returns its exit code."""
    name = str(item.container.get("name"))
    for dep in [str(d) for d in item.container.get("dependencies") or []]:
        done[dep].wait()
        if codes.get(dep, 1) != 0:
            why = f'dependency "{dep}" exited with non-zero code: {codes.get(dep, 1)}'
            book.finish(kid, "Error", f"{name}: Error (exit code {_EMISSARY_ERROR}): {why}")
            return _EMISSARY_ERROR
    book.start(kid)
    body = {k: v for k, v in item.container.items() if k != "dependencies"}
    template: dict[str, Any] = {"name": spec.template.get("name"), "container": body}
    target = pod if name == "main" else Node(kid.id, kid.name, name, "Container", kid.template_name)
    if name == "main":  # Argo reads the pod's outputs from the container named main, once all have ended
        template["outputs"] = spec.template.get("outputs") or {}
    one = dataclasses.replace(spec, template=template, node_dir=spec.node_dir / "containers" / name, mounts=item.mounts)
    try:
        one = dataclasses.replace(one, containers=(), init=(), sidecars=())
        phase, message = run_container(one, target, later if name == "main" else None)
    except WorkflowError as e:
        phase, message = "Error", str(e)
    code = target.exit_code if target.exit_code is not None else (1 if phase != "Succeeded" else 0)
    if phase == "Succeeded":
        book.finish(kid, "Succeeded")
        return 0
    detail = message[len(f"exit code {code}") :] if message.startswith("exit code") else f": {message}"
    book.finish(kid, phase, f"{name}: Error (exit code {code}){detail}")
    return code or 1
