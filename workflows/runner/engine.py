"""The local runner: executes a rendered Argo Workflow spec on this machine with Argo's semantics.

Covers dag (enhanced `depends` and legacy `dependencies`) and steps templates, nesting, container and script
leaves, parameters and artifacts, `when`, withItems / withParam / withSequence, parallelism, retryStrategy,
activeDeadlineSeconds, suspend, and onExit with `workflow.status` / `workflow.failures`. The leaves (pods with
sidecars, daemons, containerSets; retries; suspend) are in `workflows.runner.leaves`, `http` templates in
`workflows.runner.http_template`, step/task exit hooks in `workflows.runner.tasks`. What needs a cluster is
refused up front (see `workflows.runner.options.unsupported`).
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
from workflows.runner.artifacts import ArtifactStore, artifact_reference, resolve_argument
from workflows.runner.cluster import ClusterConfig
from workflows.runner.http_template import run_http_node
from workflows.runner.leaves import export_globals, run_pod_node, run_retry, run_suspend
from workflows.runner.memo import memo_of, outputs_of, restore_outputs
from workflows.runner.nodes import FAILED, Node, NodeBook, failures, format_tree, iso
from workflows.runner.options import RunOptions, RunResult, unsupported
from workflows.runner.sandbox import sandbox_for
from workflows.runner.scope import NAMESPACE, template_inputs, workflow_globals
from workflows.runner.state import STATE, STATUS, SavedRun, last_seq, requested_shutdown, write_json
from workflows.runner.sync import LockAbandoned, acquire, locks_of
from workflows.runner.tasks import TaskContext, run_dag, run_steps
from workflows.runner.templates import TemplateResolver, path_placeholders, template_outputs

__all__ = ["Runner"]

_TERMINAL = frozenset({"Succeeded", "Failed", "Error", "Skipped", "Omitted"})
_REUSED = frozenset({"Pod", "Retry", "Suspend", "HTTP"})  # leaves a resumed run takes as they were
_KINDS = (("dag", "DAG"), ("steps", "Steps"), ("suspend", "Suspend"), ("http", "HTTP"))  # node type, else Pod
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
        self.daemons: list[tuple[Node, threading.Event, threading.Thread]] = []  # (node, scope ended, its thread)

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
        if not self.exiting:  # Argo's `%f` seconds since the start, as of this substitution
            scope["workflow.duration"] = f"{time.time() - self.started:f}"
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
        scope.update({f"inputs.artifacts.{k}": artifact_reference(a) for k, a in (artifacts or {}).items()})
        scope.update(path_placeholders(tmpl))
        kind = next((name for key, name in _KINDS if key in tmpl), "Pod")
        reused = self._reuse(parent, display)
        if reused is not None:
            export_globals(self, tmpl, reused)
            return reused
        retried = kind == "Pod" and "retryStrategy" in tmpl
        node = self.book.new(parent, display, "Retry" if retried else kind, str(tmpl["name"]))
        node.scheduling = {k: tmpl[k] for k in _RECORDED if k in tmpl}
        stopped = self.stopped(kind)
        if stopped:
            return self.book.finish(node, "Failed", stopped)
        try:
            where = f"template {tmpl['name']}: synchronization"
            locks = locks_of(tmpl.get("synchronization"), self.cluster, NAMESPACE, where, scope)
            held = acquire(locks, self._waiting(node), abandon=self.lock_abandoned)
        except LockAbandoned as e:  # Argo fails a node waiting on a lock when the workflow stops or times out
            return self.book.finish(node, "Failed", str(e))
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
            export_globals(self, tmpl, node)
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
                return run_retry(self, tmpl, scope, node, artifacts)
            if kind == "Pod":
                return run_pod_node(self, tmpl, scope, node, artifacts)
            if kind == "HTTP":  # Argo's agent makes the request; no pod
                return run_http_node(self, tmpl, scope, node)
            if kind == "Suspend":
                return run_suspend(self, tmpl, node)
            ctx = TaskContext(self, tmpl, node, scope)
            try:
                phase, message = run_dag(ctx) if kind == "DAG" else run_steps(ctx)
            finally:
                self.end_daemons(node.id)  # its scope ended (or is suspended, and this process with it)
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

    def stopped(self, kind: str) -> str:
        """Why a node may not start: the workflow was stopped/terminated, or its deadline passed ("" if it may)."""
        if kind not in ("Pod", "Suspend", "HTTP") or self.exiting:  # Argo runs exit handlers after stop and deadline
            return ""
        strategy = self.options.shutdown or requested_shutdown(self.run_dir)
        if strategy:
            return f"Stopped with strategy '{strategy}'"
        if self.deadline is not None and time.time() >= self.deadline:
            return "Step exceeded its deadline"
        return ""

    def kill_reason(self) -> str:
        """Why running pods must be killed now: a stop (not the exit handler's pods) or a terminate, else ""."""
        strategy = self.options.shutdown or requested_shutdown(self.run_dir)
        if strategy == "Terminate" or (strategy and not self.exiting):
            return f"Stopped with strategy '{strategy}'"
        return ""

    def lock_abandoned(self) -> str:
        """Why a node waiting on a lock must give up: a stop (not in the exit handler), a terminate, the deadline."""
        reason = self.kill_reason()
        if not reason and not self.exiting and self.deadline is not None and time.time() >= self.deadline:
            reason = "Step exceeded its deadline"
        return reason

    def end_daemons(self, boundary: str | None) -> None:
        """Kill the daemons started in the steps/DAG node `boundary` (None: all), as Argo's killDaemonedChildren.

        Each is then Succeeded (Failed if it ended by itself before); returns once their pods are gone.
        """
        ending = [(n, ended, t) for n, ended, t in self.daemons if boundary is None or n.boundary_id == boundary]
        for _node, ended, _thread in ending:
            ended.set()
        for _node, _ended, thread in ending:
            thread.join()
        self.daemons = [d for d in self.daemons if d not in ending]

    def _waiting(self, node: Node) -> Any:
        """What a node does while a lock is held elsewhere: Pending, with Argo's message, saved for `get`."""

        def waiting(message: str) -> None:
            node.phase, node.message = "Pending", message
            self.persist("Running", "")

        return waiting

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
        try:
            held = acquire(locks, self._save_pending, owner=str(self.run_dir.resolve()), abandon=self._shutdown)
        except LockAbandoned as e:  # stopped or terminated while Pending on its lock: it never started
            status = self.persist("Failed", str(e), final=True)
            return RunResult(self.name, "Failed", str(e), self.run_dir, status, "")
        phase = "Error"
        try:
            main = self._main()
            phase, message = self._outcome(main)
        finally:
            self.end_daemons(None)
            if phase == "Running":
                held.park()  # Argo: a suspended workflow keeps its workflow-level lock
            else:
                held.release()
        status = self.persist(phase, message, final=True)
        return RunResult(self.name, phase, message, self.run_dir, status, format_tree(self.book, main))

    def _main(self) -> Node:
        entry = self.template({"template": self.spec.get("entrypoint")}, "spec.entrypoint")
        params, arts = self.arguments()
        # operator.go calls the entrypoint (and onExit) as a step with no name: `{{steps.name}}` is "" there
        main = self.execute(entry, params, None, self.name, arts, {"steps.name": ""})
        self.end_daemons("")  # a daemon entrypoint: its scope is the workflow
        return main

    def _shutdown(self) -> str:
        strategy = self.options.shutdown or requested_shutdown(self.run_dir)
        return f"Stopped with strategy '{strategy}'" if strategy else ""

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
                    "startedAt": iso(self.started),
                    "finishedAt": iso(time.time()) if final and phase != "Running" else None,
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
        self.globals.update(
            {
                "workflow.status": phase,
                "workflow.failures": json.dumps(failures(self.book)),
                "workflow.duration": f"{main.duration:f}",
            }
        )
        self.exiting = True
        handler = self.template({"template": self.spec["onExit"]}, "spec.onExit")
        params, arts = self.arguments()
        exit_node = self.execute(handler, params, None, f"{self.name}.onExit", arts, {"steps.name": ""})
        if exit_node.phase in FAILED and phase == "Succeeded":
            return exit_node.phase, exit_node.message  # Argo: the exit node's phase and message
        return phase, message
