"""The local runner: executes a rendered Argo Workflow spec on this machine with Argo's semantics.

Covers dag (enhanced `depends` and legacy `dependencies`) and steps templates, nesting, container and script
leaves, parameters and artifacts, `when`, withItems / withParam / withSequence, parallelism, retryStrategy,
activeDeadlineSeconds, suspend, and onExit with `workflow.status` / `workflow.failures`. What needs a cluster
is refused up front (see `workflows.runner.options.unsupported`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.runner.artifacts import ArtifactStore, resolve_argument
from workflows.runner.cluster import ClusterConfig
from workflows.runner.memo import memo_of, outputs_of, restore_outputs
from workflows.runner.nodes import FAILED, Node, NodeBook, format_tree
from workflows.runner.options import RunOptions, RunResult, unsupported
from workflows.runner.podpatch import patch_template
from workflows.runner.pods import PodSpec, parse_duration, run_pod, sleep_until
from workflows.runner.retry import Backoff, expression_allows, retry_scope, retry_wanted
from workflows.runner.sandbox import sandbox_for
from workflows.runner.scope import NAMESPACE, template_inputs, workflow_globals
from workflows.runner.state import STATE, STATUS, SavedRun, last_seq, requested_shutdown, write_json
from workflows.runner.sync import acquire, locks_of
from workflows.runner.tasks import TaskContext, run_dag, run_steps
from workflows.runner.templates import (
    TemplateResolver,
    path_placeholders,
    template_outputs,
    with_resolved_paths,
)
from workflows.runner.volumes import VolumePlaces, init_containers, pod_mounts

__all__ = ["Runner"]

_TERMINAL = frozenset({"Succeeded", "Failed", "Error", "Skipped", "Omitted"})
_REUSED = frozenset({"Pod", "Retry", "Suspend"})  # leaves a resumed run takes as they were
_DEADLINES = ("activeDeadlineSeconds", "timeout")
_RECORDED = (
    "resources",
    "affinity",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
    "schedulerName",
    "serviceAccountName",
    "securityContext",
    "podSpecPatch",
    "metadata",
    "metrics",
    "automountServiceAccountToken",
    "retryStrategy",
)


class Runner:
    """Runs one workflow dict (from `resolve_workflow`) to completion."""

    def __init__(
        self,
        workflow: Mapping[str, Any],
        options: RunOptions,
        templates_by_name: Mapping[str, Mapping[str, Any]],
        saved: SavedRun | None = None,
    ) -> None:
        self.workflow = {k: workflow.get(k) for k in ("stem", "spec", "metadata")}
        self.spec = workflow["spec"]
        self.metadata: Mapping[str, Any] = workflow.get("metadata") or {}
        self.options = options
        self.refs = templates_by_name
        self.saved = saved
        self.name = saved.name if saved else f"{workflow['stem']}-{uuid.uuid4().hex[:5]}"
        self.uid = saved.uid if saved else str(uuid.uuid4())
        self.started = saved.started if saved else time.time()
        self.run_dir = options.runs_dir / self.name
        old = saved.saved_nodes() if saved else {}
        self.saved_by_id, self.saved_by_name = old, {n.name: n for n in old.values()}
        self.book = NodeBook(self.name, echo=options.echo, first_seq=last_seq(old))
        self.templates = {str(t["name"]): t for t in self.spec.get("templates", [])}
        limit = self.spec.get("parallelism")
        self.pod_slots = threading.BoundedSemaphore(int(limit)) if limit else None
        timeout = self.spec.get("activeDeadlineSeconds")
        self.deadline = self.started + float(timeout) if timeout else None  # wall time: it spans a suspension
        self.cluster = ClusterConfig.load(options.cluster_config)
        self.resolver = TemplateResolver(self.templates, templates_by_name)
        self.globals = dict(saved.globals) if saved else self._globals()
        self._save_lock = threading.Lock()
        self.exiting = False  # running the exit handler
        self.book.on_finish = lambda _node: self._save_running()
        self.sandbox = sandbox_for(options.isolation, self.run_dir)
        self.store = ArtifactStore(self.cluster, self.spec.get("artifactRepositoryRef"))

    def _globals(self) -> dict[str, str]:
        return workflow_globals(self.name, self.uid, self.workflow, dict(self.options.parameters), self.cluster)

    # ---- template resolution and inputs -------------------------------------------------------------------

    def template(
        self, ref: Mapping[str, Any], where: str, within: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any]:
        """The template a task/step/onExit calls from template `within` (see `workflows.runner.templates`)."""
        return self.resolver.resolve(ref, where, within)

    def arguments(self) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        """The resolved `spec.arguments` (parameters, artifacts), what Argo passes the entrypoint and exit handler."""
        args = self.spec.get("arguments", {})
        params = {str(p["name"]): self.globals[f"workflow.parameters.{p['name']}"] for p in args.get("parameters", [])}
        arts = {str(a["name"]): resolve_argument(a, self.globals, "spec.arguments") for a in args.get("artifacts", [])}
        return params, arts

    def inputs(self, tmpl: Mapping[str, Any], args: Mapping[str, str]) -> dict[str, str]:
        """The template's input parameters: arguments, else value/default; enums checked."""
        return template_inputs(tmpl, args, self.cluster, self.globals)

    def scope_for(self, inputs: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Global variables + `inputs.parameters.*` (+ the JSON list Hera's runner reads)."""
        scope = dict(self.globals)
        scope.update({f"inputs.parameters.{k}": v for k, v in inputs.items()})
        scope["inputs.parameters"] = json.dumps([{"name": k, "value": v} for k, v in inputs.items()])
        scope.update(extra or {})
        return scope

    # ---- execution ----------------------------------------------------------------------------------------

    def execute(
        self,
        tmpl: Mapping[str, Any],
        args: Mapping[str, str],
        parent: Node | None,
        display: str,
        artifacts: Mapping[str, Mapping[str, Any]] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Node:
        """Run any template under `parent`; returns its (terminal) node."""
        inputs = self.inputs(tmpl, args)
        scope = self.scope_for(inputs, extra)
        scope.update({f"inputs.artifacts.{k}": str(a["from"]) for k, a in (artifacts or {}).items() if "from" in a})
        scope.update(path_placeholders(tmpl))
        kind = "DAG" if "dag" in tmpl else "Steps" if "steps" in tmpl else "Suspend" if "suspend" in tmpl else "Pod"
        reused = self._reuse(parent, display)
        if reused is not None:
            self._export_globals(tmpl, reused)
            return reused
        retried = kind == "Pod" and "retryStrategy" in tmpl
        node = self.book.new(parent, display, "Retry" if retried else kind, str(tmpl["name"]))
        node.scheduling = {k: tmpl[k] for k in _RECORDED if k in tmpl}
        stopped = self._stopped(kind)
        if stopped:
            return self.book.finish(node, "Failed", stopped)
        try:
            where = f"template {tmpl['name']}: synchronization"
            locks = locks_of(tmpl.get("synchronization"), self.cluster, NAMESPACE, where, scope)
            held = acquire(locks, self._waiting(node))
        except WorkflowError as e:
            return self.book.finish(node, "Error", str(e))
        try:
            node.message = ""
            return self._run_memoized(tmpl, scope, node, kind, artifacts or {})
        finally:
            held.release()

    def _run_memoized(
        self,
        tmpl: Mapping[str, Any],
        scope: dict[str, str],
        node: Node,
        kind: str,
        artifacts: Mapping[str, Mapping[str, Any]],
    ) -> Node:
        """Run the node, unless `memoize` has its outputs (Argo looks once the node's locks are held)."""
        try:
            memo = memo_of(tmpl, scope, NAMESPACE)
            cached = memo.load() if memo else None
        except WorkflowError as e:
            return self.book.finish(node, "Error", str(e))
        if memo is not None:
            node.memoization = memo.status(cached is not None)
        if cached is not None:  # Argo: a cache hit is Succeeded at once with the cached outputs, no pod
            restore_outputs(node, cached)
            self._export_globals(tmpl, node)
            return self.book.finish(node, "Succeeded")
        self.book.start(node)
        done = self._run_node(tmpl, scope, node, kind, artifacts)
        if memo is not None and done.phase == "Succeeded":
            memo.save(done.id, outputs_of(done))
        return done

    def _run_node(
        self,
        tmpl: Mapping[str, Any],
        scope: dict[str, str],
        node: Node,
        kind: str,
        artifacts: Mapping[str, Mapping[str, Any]],
    ) -> Node:
        try:
            if node.type == "Retry":
                return self._retry(tmpl, scope, node, artifacts)
            if kind == "Pod":
                return self._pod(tmpl, scope, node, artifacts)
            if kind == "Suspend":
                return self._suspend(tmpl, node)
            ctx = TaskContext(self, tmpl, node, scope)
            phase, message = run_dag(ctx) if kind == "DAG" else run_steps(ctx)
            if phase == "Running":  # a suspend node inside waits for `llmrelease resume`
                return node
            template_outputs(tmpl, node, ctx.scope)
        except WorkflowError as e:
            phase, message = "Error", str(e)
        return self.book.finish(node, phase, message)

    def _reuse(self, parent: Node | None, display: str) -> Node | None:
        """The node of that name a resumed run already finished (with its children), else None."""
        old = self.saved_by_name.get(display if parent is None else f"{parent.name}.{display}")
        if old is None or old.type not in _REUSED or old.phase not in _TERMINAL:
            return None

        def adopt(node: Node, under: Node | None) -> Node:
            self.book.adopt(node, under)
            for child in node.children:
                if child in self.saved_by_id:
                    adopt(self.saved_by_id[child], None)
            return node

        return adopt(old, parent)

    def _stopped(self, kind: str) -> str:
        """Why a node may not start: the workflow was stopped/terminated, or its deadline passed ("" if it may)."""
        if kind not in ("Pod", "Suspend") or self.exiting:  # Argo runs exit handlers after stop and deadline
            return ""
        strategy = self.options.shutdown or requested_shutdown(self.run_dir)
        if strategy:
            return f"Stopped with strategy '{strategy}'"
        if self.deadline is not None and time.time() >= self.deadline:
            return "Step exceeded its deadline"
        return ""

    def _kill_reason(self) -> str:
        """Why running pods must be killed now: a stop (not the exit handler's pods) or a terminate, else ""."""
        strategy = self.options.shutdown or requested_shutdown(self.run_dir)
        if strategy == "Terminate" or (strategy and not self.exiting):
            return f"Stopped with strategy '{strategy}'"
        return ""

    def _waiting(self, node: Node) -> Any:
        """What a node does while a lock is held elsewhere: Pending, with Argo's message, saved for `get`."""

        def waiting(message: str) -> None:
            node.phase, node.message = "Pending", message
            self.persist("Running", "")

        return waiting

    def _pod(
        self, tmpl: Mapping[str, Any], scope: Mapping[str, str], node: Node, artifacts: Mapping[str, Mapping[str, Any]]
    ) -> Node:
        scope = {**scope, "pod.name": node.id, "node.name": node.name}
        try:
            tmpl, recorded = patch_template(tmpl, self.spec.get("podSpecPatch"), scope)
            node.scheduling.update(recorded)
            claims = frozenset(str(c["metadata"]["name"]) for c in self.spec.get("volumeClaimTemplates") or [])
            places = VolumePlaces(self.run_dir / "nodes" / node.id, self.run_dir, claims)
            spec = PodSpec(
                with_resolved_paths(tmpl, scope),
                scope,
                self.run_dir / "nodes" / node.id,
                self.run_dir / "artifacts" / node.id,
                artifacts,
                self._pod_deadline(tmpl),
                cluster=self.cluster,
                store=self.store,
                sandbox=self.sandbox,
                stopped=self._kill_reason,
                mounts=(mounts := tuple(pod_mounts(tmpl, self.spec, places, self.cluster))),
                init=init_containers(tmpl, self.spec, places, self.cluster, mounts),
            )
            if self.pod_slots:
                with self.pod_slots:
                    phase, message = run_pod(spec, node)
            else:
                phase, message = run_pod(spec, node)
        except WorkflowError as e:
            phase, message = "Error", str(e)
        self._export_globals(tmpl, node)
        return self.book.finish(node, phase, message)

    def _export_globals(self, tmpl: Mapping[str, Any], node: Node) -> None:
        """Outputs with `globalName` become `workflow.outputs.parameters|artifacts.<globalName>`, as in Argo."""
        outputs = tmpl.get("outputs", {})
        for kind, found in (("parameters", node.parameters), ("artifacts", node.artifacts)):
            for item in outputs.get(kind, []):
                if "globalName" in item and item["name"] in found:
                    self.globals[f"workflow.outputs.{kind}.{item['globalName']}"] = str(found[item["name"]])

    def _pod_deadline(self, tmpl: Mapping[str, Any]) -> float | None:
        """Seconds a pod may run: its activeDeadlineSeconds and `timeout`, capped by what is left of the workflow's.

        Argo enforces a template's `timeout` through the pod's activeDeadlineSeconds (checkTemplateTimeouts).
        """
        limits = [parse_duration(tmpl[k], f"template {tmpl['name']}: {k}") for k in _DEADLINES if tmpl.get(k)]
        if self.deadline is not None:
            limits.append(max(0.0, self.deadline - time.time()))
        return min(limits) if limits else None

    def _retry(
        self, tmpl: Mapping[str, Any], scope: Mapping[str, str], group: Node, artifacts: Mapping[str, Mapping[str, Any]]
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
            node = self.book.new(group, f"{group.display_name}({attempt})", "Pod", str(tmpl["name"]))
            stopped = self._stopped("Pod")
            if stopped:
                self.book.finish(node, "Failed", stopped)
                return self.book.finish(group, "Failed", stopped)
            self.book.start(node)
            self._pod(tmpl, {**scope, **retry_scope(attempt, last)}, node, artifacts)
            last = node
            for attr in ("parameters", "result", "exit_code", "artifacts"):
                setattr(group, attr, getattr(node, attr))
            why = self._no_retry(strategy, policy, node, attempt, limit, where)
            if why is None:
                wait = backoff.wait(attempt)
                if backoff.max_duration is not None and time.time() + wait > first + backoff.max_duration:
                    why = "Backoff would exceed max duration limit"
            if why is not None:
                return self.book.finish(group, node.phase, why or node.message)
            sleep_until(time.monotonic() + wait)
            attempt += 1

    def _no_retry(
        self, strategy: Mapping[str, Any], policy: str, node: Node, attempt: int, limit: object, where: str
    ) -> str | None:
        """Why the attempt `node` is the last ("" keeps its own message), or None to retry (Argo's order)."""
        if not retry_wanted(node.phase, node.message, policy):
            return ""
        if limit is not None and attempt >= int(str(limit)):
            return "No more retries left"
        if strategy.get("expression") and not expression_allows(str(strategy["expression"]), node, where):
            return "retryStrategy.expression evaluated to false"
        if self.deadline is not None and time.time() >= self.deadline:
            return f"retry exceeded workflow deadline {_iso(self.deadline)}"
        return None

    def _suspend(self, tmpl: Mapping[str, Any], node: Node) -> Node:
        """Wait out a `duration`, or stay Running (suspended) until `llmrelease resume`; then take supplied values."""
        names = {node.display_name, node.name, str(tmpl["name"])}
        resumed = self.options.resume_all or bool(names & self.options.resume)
        duration = tmpl["suspend"].get("duration") if isinstance(tmpl["suspend"], Mapping) else None
        if duration and not resumed:
            before = self.saved_by_name.get(node.name)
            node.started = before.started if before and before.started else node.started
            until = (node.started or time.time()) + parse_duration(duration, f"template {tmpl['name']}: suspend")
            end = min(until, self.deadline or until)
            while time.time() < end and not self._kill_reason():  # a stop/terminate fails it (Argo)
                time.sleep(min(0.1, max(0.0, end - time.time())))
            if self._kill_reason():
                return self.book.finish(node, "Failed", self._kill_reason())
            if self.deadline is not None and time.time() >= self.deadline:
                return self.book.finish(node, "Failed", "Step exceeded its deadline")
        elif not resumed:
            node.phase = "Running"  # Argo: the node stays Running until resumed
            self.persist("Running", "")
            return node
        for param in tmpl.get("outputs", {}).get("parameters", []):
            key = f"{node.display_name}.{param['name']}"
            source = param.get("valueFrom", {})
            value = self.options.supplied.get(key, self.options.supplied.get(str(param["name"]), source.get("default")))
            if value is None:
                return self.book.finish(
                    node,
                    "Failed",
                    f"{node.display_name}: output {param['name']!r} must be "
                    f"supplied on resume; pass --supply {key}=VALUE",
                )
            node.parameters[str(param["name"])] = str(value)
        return self.book.finish(node, "Succeeded", "resumed")

    def suspended(self) -> list[Node]:
        """The suspend nodes waiting to be resumed."""
        return [n for n in self.book.all() if n.type == "Suspend" and n.phase == "Running"]

    def run(self) -> RunResult:
        """Run entrypoint then onExit (or stop at a suspend node); returns the Argo-shaped outcome."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        refused = unsupported(self.spec)
        if refused:
            raise WorkflowError(
                f"the local runner cannot run {refused[0]} (needs a cluster); remove it or run on "
                f"Argo ({len(refused)} such field(s))"
            )
        self.persist("Pending", "")
        sync = self.spec.get("synchronization")
        locks = locks_of(sync, self.cluster, NAMESPACE, "spec.synchronization", self.globals)
        held = acquire(locks, lambda message: self._save_pending(message), owner=str(self.run_dir.resolve()))
        phase = "Error"
        try:
            main = self._main()
            phase, message = self._outcome(main)
        finally:
            if phase == "Running":
                held.park()  # Argo: a suspended workflow keeps its workflow-level lock
            else:
                held.release()
        status = self.persist(phase, message, final=True)
        return RunResult(self.name, phase, message, self.run_dir, status, format_tree(self.book, main))

    def _main(self) -> Node:
        entry = self.template({"template": self.spec.get("entrypoint")}, "spec.entrypoint")
        params, arts = self.arguments()
        return self.execute(entry, params, None, self.name, arts)

    def _outcome(self, main: Node) -> tuple[str, str]:
        """The workflow's phase and message from its entry node, after the exit handler (Argo's rules)."""
        if main.phase == "Running":
            waiting = ", ".join(n.display_name for n in self.suspended())
            return "Running", (
                f"suspended at {waiting}: resume with `llmrelease resume {self.name}` "
                f"(--node NODE, --supply PARAM=VALUE), or `llmrelease stop|terminate {self.name}`"
            )
        strategy = self.options.shutdown or requested_shutdown(self.run_dir)
        if main.phase in FAILED:
            phase, message = main.phase, f"Stopped with strategy '{strategy}'" if strategy else main.message
        else:
            phase, message = "Succeeded", ""
        if self.spec.get("onExit") and strategy != "Terminate":
            phase, message = self._on_exit(main, phase, message)
        return phase, message

    def _save_running(self) -> None:
        self.persist("Running", "")

    def _save_pending(self, message: str) -> None:
        self.persist("Pending", message)

    def persist(self, phase: str, message: str, *, final: bool = False) -> dict[str, Any]:
        """Write `status.json` (Argo's shape) and `state.json` (what resume needs); returns the status."""
        with self._save_lock:
            nodes = self.book.all()
            status = {
                "metadata": {"name": self.name, "uid": self.uid, "namespace": NAMESPACE},
                "status": {
                    "phase": phase,
                    "message": message,
                    "startedAt": _iso(self.started),
                    "finishedAt": _iso(time.time()) if final and phase != "Running" else None,
                    "nodes": {n.id: n.to_status() for n in nodes},
                },
            }
            state = SavedRun(
                self.name,
                self.uid,
                self.workflow,
                dict(self.refs),
                self.globals,
                {
                    "isolation": self.options.isolation,
                    "cluster_config": str(self.options.cluster_config or ""),
                    "pid": None if final else os.getpid(),
                },
                self.started,
                [dataclasses.asdict(n) for n in nodes],
                phase,
            )
            write_json(self.run_dir / STATUS, status)
            write_json(self.run_dir / STATE, dataclasses.asdict(state))
            return status

    def _on_exit(self, main: Node, phase: str, message: str) -> tuple[str, str]:
        failures = [
            {
                "displayName": n.display_name,
                "message": n.message,
                "templateName": n.template_name,
                "phase": n.phase,
                "podName": n.id,
                "finishedAt": _iso(n.finished),
            }
            for n in self.book.all()
            if n.phase in FAILED and n.type == "Pod"
        ]
        self.globals.update(
            {
                "workflow.status": phase,
                "workflow.failures": json.dumps(failures),
                "workflow.duration": f"{main.duration:.3f}",
            }
        )
        self.exiting = True
        handler = self.template({"template": self.spec["onExit"]}, "spec.onExit")
        params, arts = self.arguments()
        exit_node = self.execute(handler, params, None, f"{self.name}.onExit", arts)
        if exit_node.phase in FAILED and phase == "Succeeded":
            return exit_node.phase, exit_node.message  # Argo: the exit node's phase and message
        return phase, message


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
