"""The local runner: executes a rendered Argo Workflow spec on this machine with Argo's semantics.

Covers dag (enhanced `depends` and legacy `dependencies`) and steps templates, nesting, container and script
leaves, parameters and artifacts, `when`, withItems / withParam / withSequence, parallelism, retryStrategy,
activeDeadlineSeconds, suspend, and onExit with `workflow.status` / `workflow.failures`. What needs a cluster
is refused up front (see `unsupported`).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.runner.artifacts import ArtifactStore, resolve_argument
from workflows.runner.cluster import ClusterConfig
from workflows.runner.nodes import FAILED, Node, NodeBook, format_tree
from workflows.runner.pods import PodSpec, backoff_delays, parse_duration, run_pod, sleep_until
from workflows.runner.sandbox import ISOLATIONS, Sandbox, bwrap_problem
from workflows.runner.tasks import TaskContext, run_dag, run_steps
from workflows.runner.templates import TemplateResolver, parameter_value

__all__ = ["RunOptions", "RunResult", "Runner", "unsupported"]

_REFUSED_TEMPLATE = ("resource", "http", "data", "containerSet", "plugin", "sidecars", "initContainers", "volumes")
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
    found = [f"spec.{key}" for key in ("volumes", "volumeClaimTemplates", "hostNetwork") if spec.get(key)]
    for tmpl in spec.get("templates", []):
        where = f"template {tmpl.get('name')}"
        found += [f"{where}: {key}" for key in _REFUSED_TEMPLATE if tmpl.get(key)]
        if tmpl.get("daemon"):
            found.append(f"{where}: daemon")
        body = tmpl.get("container") or tmpl.get("script") or {}
        found += [f"{where}: {key}" for key in ("volumeMounts", "volumeDevices") if body.get(key)]
        for task in tmpl.get("dag", {}).get("tasks", []):
            found += [f"{where}: task {task.get('name')}: {k}" for k in ("onExit", "hooks") if task.get(k)]
    return found


class Runner:
    """Runs one workflow dict (from `resolve_workflow`) to completion."""

    def __init__(
        self, workflow: Mapping[str, Any], options: RunOptions, templates_by_name: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.spec = workflow["spec"]
        self.metadata: Mapping[str, Any] = workflow.get("metadata") or {}
        self.options = options
        self.refs = templates_by_name
        suffix = uuid.uuid4().hex[:5]
        self.name = f"{workflow['stem']}-{suffix}"
        self.uid = str(uuid.uuid4())
        self.run_dir = options.runs_dir / self.name
        self.book = NodeBook(self.name, echo=options.echo)
        self.templates = {str(t["name"]): t for t in self.spec.get("templates", [])}
        limit = self.spec.get("parallelism")
        self.pod_slots = threading.BoundedSemaphore(int(limit)) if limit else None
        timeout = self.spec.get("activeDeadlineSeconds")
        self.deadline = time.monotonic() + float(timeout) if timeout else None
        self.cluster = ClusterConfig.load(options.cluster_config)
        self.resolver = TemplateResolver(self.templates, templates_by_name)
        self.globals = self._globals()
        self.sandbox = _sandbox(options.isolation, self.run_dir)
        self.store = ArtifactStore(self.cluster, self.spec.get("artifactRepositoryRef"))

    def _globals(self) -> dict[str, str]:
        given = dict(self.options.parameters)
        scope = {
            "workflow.name": self.name,
            "workflow.uid": self.uid,
            "workflow.namespace": "local",
            "workflow.serviceAccountName": str(self.spec.get("serviceAccountName", "default")),
            "workflow.creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "workflow.mainEntrypoint": str(self.spec.get("entrypoint", "")),
        }
        for kind in ("labels", "annotations"):  # workflow.labels.<NAME>, .json and (deprecated) the bare JSON
            notes = {str(k): str(v) for k, v in (self.metadata.get(kind) or {}).items()}
            scope |= {f"workflow.{kind}.{k}": v for k, v in notes.items()}
            scope[f"workflow.{kind}"] = scope[f"workflow.{kind}.json"] = json.dumps(notes)
        declared = self.spec.get("arguments", {}).get("parameters", [])
        for param in declared:
            name = str(param["name"])
            value = parameter_value(param, given.pop(name, None), self.cluster, f"workflow parameter {name!r}")
            if value is None:
                raise WorkflowError(f"workflow parameter {name!r} has no value; pass -p {name}=VALUE")
            _check_enum(param, str(value), f"workflow parameter {name!r}")
            scope[f"workflow.parameters.{name}"] = str(value)
        if given:
            known = ", ".join(str(p["name"]) for p in declared) or "none"
            raise WorkflowError(f"unknown parameter(s) {', '.join(sorted(given))}: this workflow takes {known}")
        scope["workflow.parameters"] = json.dumps(
            [{"name": k.split(".", 2)[2], "value": v} for k, v in scope.items() if k.startswith("workflow.param")]
        )
        return scope

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
        values: dict[str, str] = {}
        for param in tmpl.get("inputs", {}).get("parameters", []):
            name = str(param["name"])
            value = parameter_value(param, args.get(name), self.cluster, f"template {tmpl['name']}: input {name!r}")
            if value is None:
                raise WorkflowError(
                    f"template {tmpl['name']}: input parameter {name!r} has no value; "
                    "pass it as an argument or give it a default"
                )
            values[name] = str(value)
            _check_enum(param, values[name], f"template {tmpl['name']}: input {name!r}")
        return values

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
        scope.update(_path_placeholders(tmpl))
        kind = "DAG" if "dag" in tmpl else "Steps" if "steps" in tmpl else "Suspend" if "suspend" in tmpl else "Pod"
        if kind == "Pod" and "retryStrategy" in tmpl:
            return self._retry(tmpl, scope, parent, display, artifacts or {})
        node = self.book.new(parent, display, kind, str(tmpl["name"]))
        self.book.start(node)
        node.scheduling = {k: tmpl[k] for k in _RECORDED if k in tmpl}
        try:
            if kind == "Pod":
                return self._pod(tmpl, scope, node, artifacts or {})
            if kind == "Suspend":
                return self._suspend(tmpl, node)
            ctx = TaskContext(self, tmpl, node, scope)
            phase, message = run_dag(ctx) if kind == "DAG" else run_steps(ctx)
            _template_outputs(tmpl, node, ctx.scope)
        except WorkflowError as e:
            phase, message = "Error", str(e)
        return self.book.finish(node, phase, message)

    def _pod(
        self, tmpl: Mapping[str, Any], scope: Mapping[str, str], node: Node, artifacts: Mapping[str, Mapping[str, Any]]
    ) -> Node:
        scope = {**scope, "pod.name": node.id, "node.name": node.name}
        try:
            spec = PodSpec(
                _with_resolved_paths(tmpl, scope),
                scope,
                self.run_dir / "nodes" / node.id,
                self.run_dir / "artifacts" / node.id,
                artifacts,
                self._pod_deadline(tmpl),
                cluster=self.cluster,
                store=self.store,
                sandbox=self.sandbox,
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
        """Seconds a pod may run: its activeDeadlineSeconds, capped by what is left of the workflow's."""
        deadline = tmpl.get("activeDeadlineSeconds")
        limit = parse_duration(deadline, f"template {tmpl['name']}") if deadline else None
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            limit = left if limit is None else min(limit, left)
        return limit

    def _retry(
        self,
        tmpl: Mapping[str, Any],
        scope: Mapping[str, str],
        parent: Node | None,
        display: str,
        artifacts: Mapping[str, Mapping[str, Any]],
    ) -> Node:
        strategy = tmpl["retryStrategy"]
        where = f"template {tmpl['name']}: retryStrategy"
        limit = int(str(strategy.get("limit", "0")))
        policy = str(strategy.get("retryPolicy", "OnFailure"))
        delay, factor, max_total = backoff_delays(strategy, where)
        cap = parse_duration(strategy["backoff"]["cap"], where) if (strategy.get("backoff") or {}).get("cap") else None
        group = self.book.new(parent, display, "Retry", str(tmpl["name"]))
        self.book.start(group)
        first = time.monotonic()
        attempt_node = group
        for attempt in range(limit + 1):
            attempt_node = self.book.new(group, f"{display}({attempt})", "Pod", str(tmpl["name"]))
            self.book.start(attempt_node)
            self._pod(tmpl, {**scope, "retries": str(attempt)}, attempt_node, artifacts)
            if not _should_retry(attempt_node.phase, policy) or attempt == limit:
                break
            wait = min(delay * factor**attempt, cap) if cap else delay * factor**attempt
            if max_total is not None and time.monotonic() + wait - first > max_total:
                attempt_node.message += " (retry stopped: backoff.maxDuration reached)"
                break
            sleep_until(time.monotonic() + wait)
        for attr in ("parameters", "result", "exit_code", "artifacts"):
            setattr(group, attr, getattr(attempt_node, attr))
        return self.book.finish(group, attempt_node.phase, attempt_node.message)

    def _suspend(self, tmpl: Mapping[str, Any], node: Node) -> Node:
        names = {node.display_name, node.name, str(tmpl["name"])}
        duration = tmpl["suspend"].get("duration") if isinstance(tmpl["suspend"], Mapping) else None
        if duration and not names & self.options.resume:
            time.sleep(parse_duration(duration, f"template {tmpl['name']}: suspend.duration"))
        elif not names & self.options.resume:
            return self.book.finish(
                node,
                "Failed",
                f"suspended at {node.display_name}: the local runner cannot "
                f"wait; rerun with --resume {node.display_name}",
            )
        for param in tmpl.get("outputs", {}).get("parameters", []):
            key = f"{node.display_name}.{param['name']}"
            source = param.get("valueFrom", {})
            value = self.options.supplied.get(key, source.get("default"))
            if value is None:
                return self.book.finish(
                    node,
                    "Failed",
                    f"{node.display_name}: output {param['name']!r} must be "
                    f"supplied on resume; pass --supply {key}=VALUE",
                )
            node.parameters[str(param["name"])] = str(value)
        return self.book.finish(node, "Succeeded", "resumed")

    def run(self) -> RunResult:
        """Run entrypoint then onExit; returns the Argo-shaped outcome."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        refused = unsupported(self.spec)
        if refused:
            raise WorkflowError(
                f"the local runner cannot run {refused[0]} (needs a cluster); remove it or run on "
                f"Argo ({len(refused)} such field(s))"
            )
        started = time.time()
        entry = self.template({"template": self.spec.get("entrypoint")}, "spec.entrypoint")
        params, arts = self.arguments()
        main = self.execute(entry, params, None, self.name, arts)
        phase, message = ("Succeeded", "") if main.phase == "Succeeded" else ("Failed", main.message)
        if self.spec.get("onExit"):
            phase, message = self._on_exit(main, phase, message)
        status = {
            "metadata": {"name": self.name, "uid": self.uid},
            "status": {
                "phase": phase,
                "message": message,
                "startedAt": _iso(started),
                "finishedAt": _iso(time.time()),
                "nodes": {n.id: n.to_status() for n in self.book.all()},
            },
        }
        (self.run_dir / "status.json").write_text(json.dumps(status, indent=2))
        return RunResult(self.name, phase, message, self.run_dir, status, format_tree(self.book, main))

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
        handler = self.template({"template": self.spec["onExit"]}, "spec.onExit")
        params, arts = self.arguments()
        exit_node = self.execute(handler, params, None, f"{self.name}.onExit", arts)
        if exit_node.phase != "Succeeded" and phase == "Succeeded":
            return "Failed", f"exit handler failed: {exit_node.message}"
        return phase, message


def _sandbox(isolation: str, run_dir: Path) -> Sandbox | None:
    """The run's bubblewrap sandbox for `--isolation bwrap`, None for `none`; refused where bwrap cannot run."""
    if isolation not in ISOLATIONS:
        raise WorkflowError(f"--isolation {isolation}: not one of {', '.join(ISOLATIONS)}")
    if isolation == "none":
        return None
    problem = bwrap_problem()
    if problem:
        raise WorkflowError(problem)
    return Sandbox(run_dir / "images")


def _with_resolved_paths(tmpl: Mapping[str, Any], scope: Mapping[str, str]) -> Mapping[str, Any]:
    """The template with `{{...}}` substituted in its artifact and output-parameter paths, as Argo does."""
    if "{{" not in json.dumps([tmpl.get("inputs", {}), tmpl.get("outputs", {})]):
        return tmpl
    where = f"template {tmpl['name']}: path"
    resolved = copy.deepcopy(dict(tmpl))
    for section, kind in (("inputs", "artifacts"), ("outputs", "artifacts"), ("outputs", "parameters")):
        for item in resolved.get(section, {}).get(kind, []):
            holder = item.get("valueFrom", {}) if kind == "parameters" else item
            if "path" in holder:
                holder["path"] = substitute(str(holder["path"]), scope, where=where)
    return resolved


def _path_placeholders(tmpl: Mapping[str, Any]) -> dict[str, str]:
    """The `{{inputs|outputs.artifacts.N.path}}` and `{{outputs.parameters.N.path}}` a template may use.

    Argo substitutes them with the paths the template declares, in its container or script.
    """
    found = {}
    for section, kind in (("inputs", "artifacts"), ("outputs", "artifacts"), ("outputs", "parameters")):
        for item in tmpl.get(section, {}).get(kind, []):
            path = (item.get("valueFrom") or {}).get("path") if kind == "parameters" else item.get("path")
            if path and "{{" not in str(path):
                found[f"{section}.{kind}.{item['name']}.path"] = str(path)
    return found


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _check_enum(param: Mapping[str, Any], value: str, where: str) -> None:
    allowed = [str(v) for v in param.get("enum", []) or []]
    if allowed and value not in allowed:
        raise WorkflowError(f"{where}: value {value!r} is not one of {', '.join(allowed)}")


def _should_retry(phase: str, policy: str) -> bool:
    if phase == "Succeeded":
        return False
    return {
        "Always": True,
        "OnFailure": phase == "Failed",
        "OnError": phase == "Error",
        "OnTransientError": phase == "Error",
    }.get(policy, phase == "Failed")


def _template_outputs(tmpl: Mapping[str, Any], node: Node, scope: Mapping[str, str]) -> None:
    """dag/steps outputs: valueFrom.parameter references to their children's outputs."""
    for param in tmpl.get("outputs", {}).get("parameters", []):
        source = param.get("valueFrom", {})
        if "parameter" in source:
            value = substitute(
                str(source["parameter"]),
                scope,
                where=f"template {tmpl['name']}: outputs",
                strict="default" not in source,
            )
            node.parameters[str(param["name"])] = value if "{{" not in value else str(source["default"])
