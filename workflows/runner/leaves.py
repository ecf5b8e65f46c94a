"""The leaves of a workflow: a pod (container, script, containerSet; a daemon), its retries, a suspend.

The engine (`workflows.runner.engine.Runner`) calls these with itself; they launch the pod (workflows/runner/
pods.py), keep the node's bookkeeping, and honour the workflow's deadline and stop/terminate requests.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from registry.errors import WorkflowError
from workflows.runner.artifacts import ArtifactStore
from workflows.runner.cluster import ClusterConfig
from workflows.runner.containerset import run_container_set
from workflows.runner.nodes import Node, NodeBook, iso
from workflows.runner.options import RunOptions
from workflows.runner.podpatch import patch_template
from workflows.runner.pods import PodSpec, parse_duration, run_pod
from workflows.runner.probes import readiness
from workflows.runner.process import sleep_until
from workflows.runner.retry import Backoff, expression_allows, retry_scope, retry_wanted
from workflows.runner.sandbox import Sandbox
from workflows.runner.templates import with_resolved_paths
from workflows.runner.volumes import VolumePlaces, container_set, init_containers, pod_mounts


class Runner(Protocol):
    """What the leaves need from the engine (`workflows.runner.engine.Runner`): its run, nodes, clocks and stores."""

    spec: dict[str, Any]
    options: RunOptions
    run_dir: Path
    saved_by_name: dict[str, Node]
    book: NodeBook
    pod_slots: threading.BoundedSemaphore | None
    deadline: float | None
    cluster: ClusterConfig
    globals: dict[str, str]
    sandbox: Sandbox | None
    store: ArtifactStore
    daemons: list[tuple[Node, threading.Event, threading.Thread]]

    def stopped(self, kind: str) -> str:  # noqa: D102
        ...

    def kill_reason(self) -> str:  # noqa: D102
        ...

    def persist(self, phase: str, message: str, *, final: bool = False) -> dict[str, Any]:  # noqa: D102
        ...


__all__ = ["Runner", "export_globals", "run_pod_node", "run_retry", "run_suspend"]

_DEADLINES = ("activeDeadlineSeconds", "timeout")
SCOPE_ENDED = "daemon's scope ended"  # why a daemon is killed when the steps/DAG that started it ends


def run_pod_node(
    runner: Runner,
    tmpl: Mapping[str, Any],
    scope: Mapping[str, str],
    node: Node,
    artifacts: Mapping[str, Mapping[str, Any]],
) -> Node:
    """Run a pod template (container, script or containerSet) for `node`; finish the node (a daemon: see below).

    A `daemon: true` template returns as soon as its readiness probe passes, its node Running and daemoned; the
    pod keeps running until the steps/DAG that started it ends (`Runner.end_daemons`), when it is killed and the
    node Succeeded, as Argo's killDaemonedChildren does. A daemon that ends before that is Failed.
    """
    scope = {**scope, "pod.name": node.id, "node.name": node.name}
    try:
        spec, tmpl = _pod_spec(runner, tmpl, scope, node, artifacts)
    except WorkflowError as e:
        return runner.book.finish(node, "Error", str(e))
    if tmpl.get("daemon"):
        return _daemon(runner, tmpl, spec, node)
    phase, message = _launch(runner, spec, node)
    export_globals(runner, tmpl, node)
    return runner.book.finish(node, phase, message)


def _pod_spec(
    runner: Runner,
    tmpl: Mapping[str, Any],
    scope: Mapping[str, str],
    node: Node,
    artifacts: Mapping[str, Mapping[str, Any]],
) -> tuple[PodSpec, Mapping[str, Any]]:
    """The pod to run for `node`, after `podSpecPatch`; its volumes, init containers, sidecars and containers."""
    tmpl, recorded = patch_template(tmpl, runner.spec.get("podSpecPatch"), scope)
    node.scheduling.update(recorded)
    claims = frozenset(str(c["metadata"]["name"]) for c in runner.spec.get("volumeClaimTemplates") or [])
    places = VolumePlaces(runner.run_dir / "nodes" / node.id, runner.run_dir, claims)
    mounts = tuple(pod_mounts(tmpl, runner.spec, places, runner.cluster))
    spec = PodSpec(
        with_resolved_paths(tmpl, scope),
        scope,
        runner.run_dir / "nodes" / node.id,
        runner.run_dir / "artifacts" / node.id,
        artifacts,
        pod_deadline(runner, tmpl),
        cluster=runner.cluster,
        store=runner.store,
        sandbox=runner.sandbox,
        stopped=runner.kill_reason,
        mounts=mounts,
        init=init_containers(tmpl, runner.spec, places, runner.cluster, mounts),
        sidecars=init_containers(tmpl, runner.spec, places, runner.cluster, mounts, key="sidecars"),
        containers=container_set(tmpl, runner.spec, places, runner.cluster) if "containerSet" in tmpl else (),
    )
    return spec, tmpl


def _launch(runner: Runner, spec: PodSpec, node: Node) -> tuple[str, str]:
    """Run the pod within the workflow's `parallelism`; (phase, message)."""
    try:
        if runner.pod_slots:
            with runner.pod_slots:
                return _run(runner, spec, node)
        return _run(runner, spec, node)
    except WorkflowError as e:
        return "Error", str(e)


def _run(runner: Runner, spec: PodSpec, node: Node) -> tuple[str, str]:
    if spec.containers:
        return run_container_set(spec, node, runner.book)
    return run_pod(spec, node)


def _daemon(runner: Runner, tmpl: Mapping[str, Any], spec: PodSpec, node: Node) -> Node:
    """Start the daemon's pod in the background; return once it is ready (Running, daemoned) or has ended."""
    body = tmpl.get("container") or tmpl.get("script") or {}
    try:
        probe = readiness(body, f"template {tmpl['name']}")
    except WorkflowError as e:
        return runner.book.finish(node, "Error", str(e))
    ready, scope_ended, guard = threading.Event(), threading.Event(), threading.Lock()

    def is_ready() -> bool:
        if probe():
            ready.set()
        return ready.is_set()

    def stopped() -> str:
        return SCOPE_ENDED if scope_ended.is_set() else runner.kill_reason()

    def run() -> None:
        try:
            phase, message = _launch(runner, dataclasses.replace(spec, readiness=is_ready, stopped=stopped), node)
            if message == SCOPE_ENDED:
                phase, message = "Succeeded", ""
            elif phase == "Succeeded":  # Argo: a daemon pod that ends by itself is Failed
                phase, message = "Failed", "daemon exited before its scope ended"
            with guard:
                node.daemoned = False
                runner.book.finish(node, phase, message)
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True, name=f"daemon-{node.id}")
    runner.daemons.append((node, scope_ended, thread))
    thread.start()
    ready.wait()
    with guard:
        if node.finished is None:
            node.phase, node.daemoned = "Running", True
    if node.daemoned:
        runner.persist("Running", "")
    return node


def export_globals(runner: Runner, tmpl: Mapping[str, Any], node: Node) -> None:
    """Outputs with `globalName` become `workflow.outputs.parameters|artifacts.<globalName>`, as in Argo."""
    outputs = tmpl.get("outputs", {})
    for kind, found in (("parameters", node.parameters), ("artifacts", node.artifacts)):
        for item in outputs.get(kind, []):
            if "globalName" in item and item["name"] in found:
                runner.globals[f"workflow.outputs.{kind}.{item['globalName']}"] = str(found[item["name"]])


def pod_deadline(runner: Runner, tmpl: Mapping[str, Any]) -> float | None:
    """Seconds a pod may run: its activeDeadlineSeconds and `timeout`, capped by what is left of the workflow's.

    Argo enforces a template's `timeout` through the pod's activeDeadlineSeconds (checkTemplateTimeouts).
    """
    limits = [parse_duration(tmpl[k], f"template {tmpl['name']}: {k}") for k in _DEADLINES if tmpl.get(k)]
    if runner.deadline is not None:
        limits.append(max(0.0, runner.deadline - time.time()))
    return min(limits) if limits else None


def run_retry(
    runner: Runner,
    tmpl: Mapping[str, Any],
    scope: Mapping[str, str],
    group: Node,
    artifacts: Mapping[str, Mapping[str, Any]],
) -> Node:
    """Attempts `<display>(n)` under the Retry node `group` until one succeeds or the strategy says stop."""
    strategy = tmpl["retryStrategy"]
    where = f"template {tmpl['name']}: retryStrategy"
    limit = strategy.get("limit")
    policy = str(strategy.get("retryPolicy") or "OnFailure")
    backoff = Backoff(strategy, where)
    first = time.time()
    attempt, last = 0, None
    while True:
        node = runner.book.new(group, f"{group.display_name}({attempt})", "Pod", str(tmpl["name"]))
        stopped = runner.stopped("Pod")
        if stopped:
            runner.book.finish(node, "Failed", stopped)
            return runner.book.finish(group, "Failed", stopped)
        runner.book.start(node)
        run_pod_node(runner, tmpl, {**scope, **retry_scope(attempt, last)}, node, artifacts)
        last = node
        for attr in ("parameters", "result", "exit_code", "artifacts", "daemoned"):
            setattr(group, attr, getattr(node, attr))
        if node.daemoned:  # a ready daemon is fulfilled: no retry (its end finishes the attempt only)
            group.phase = "Running"
            return group
        why = _no_retry(runner, strategy, policy, node, attempt, limit, where)
        if why is None:
            wait = backoff.wait(attempt)
            if backoff.max_duration is not None and time.time() + wait > first + backoff.max_duration:
                why = "Backoff would exceed max duration limit"
        if why is not None:
            return runner.book.finish(group, node.phase, why or node.message)
        sleep_until(time.monotonic() + wait)
        attempt += 1


def _no_retry(
    runner: Runner, strategy: Mapping[str, Any], policy: str, node: Node, attempt: int, limit: object, where: str
) -> str | None:
    """Why the attempt `node` is the last ("" keeps its own message), or None to retry (Argo's order)."""
    if not retry_wanted(node.phase, node.message, policy):
        return ""
    if limit is not None and attempt >= int(str(limit)):
        return "No more retries left"
    if strategy.get("expression") and not expression_allows(str(strategy["expression"]), node, where):
        return "retryStrategy.expression evaluated to false"
    if runner.deadline is not None and time.time() >= runner.deadline:
        return f"retry exceeded workflow deadline {iso(runner.deadline)}"
    return None


def run_suspend(runner: Runner, tmpl: Mapping[str, Any], node: Node) -> Node:
    """Wait out a `duration`, or stay Running (suspended) until `llmrelease resume`; then take supplied values."""
    options = runner.options
    names = {node.display_name, node.name, str(tmpl["name"])}
    resumed = options.resume_all or bool(names & options.resume)
    duration = tmpl["suspend"].get("duration") if isinstance(tmpl["suspend"], Mapping) else None
    if duration and not resumed:
        before = runner.saved_by_name.get(node.name)
        node.started = before.started if before and before.started else node.started
        until = (node.started or time.time()) + parse_duration(duration, f"template {tmpl['name']}: suspend")
        end = min(until, runner.deadline or until)
        while time.time() < end and not runner.kill_reason():  # a stop/terminate fails it (Argo)
            time.sleep(min(0.1, max(0.0, end - time.time())))
        if runner.kill_reason():
            return runner.book.finish(node, "Failed", runner.kill_reason())
        if runner.deadline is not None and time.time() >= runner.deadline:
            return runner.book.finish(node, "Failed", "Step exceeded its deadline")
    elif not resumed:
        node.phase = "Running"  # Argo: the node stays Running until resumed
        runner.persist("Running", "")
        return node
    for param in tmpl.get("outputs", {}).get("parameters", []):
        key = f"{node.display_name}.{param['name']}"
        source = param.get("valueFrom", {})
        value = options.supplied.get(key, options.supplied.get(str(param["name"]), source.get("default")))
        if value is None:
            return runner.book.finish(
                node,
                "Failed",
                f"{node.display_name}: output {param['name']!r} must be supplied on resume; pass --supply {key}=VALUE",
            )
        node.parameters[str(param["name"])] = str(value)
    return runner.book.finish(node, "Succeeded", "resumed")
