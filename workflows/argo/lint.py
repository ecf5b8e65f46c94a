"""Offline lint of Argo Workflow, WorkflowTemplate, ClusterWorkflowTemplate and CronWorkflow manifests.

In the spirit of Argo's workflow/validate (what `argo lint` runs against a server), without a cluster:

- schema: the document has the shape and only the fields of its kind in the Argo release the project targets
  (`workflows.argo.schema`: the models of Argo's own SDK, pinned in pyproject.toml);
- the entrypoint and every template a task, step, hook or exit handler calls exist; each template has exactly
  one type; task and step names are unique; DAGs have no cycles, no dangling dependencies, parseable `depends`
  and do not mix `depends` with `dependencies`;
- every `{{...}}` tag resolves: declared inputs, spec.arguments, tasks that are ancestors (else *missing
  dependency*), steps of earlier groups, declared outputs, `item` only under a loop, Argo's globals;
- retryStrategy limits and policies; CronWorkflow schedules, timezone and concurrencyPolicy;
- Argo Events EventSources and Sensors: GitHub sources set webhookSecret, string data filters are anchored,
  trigger parameters name declared dependencies (`workflows.argo.hardening.lint_events`).

`lint_files` is what `llmrelease lint` and the local runner call; each `Problem` prints as one line.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from croniter import croniter

from registry.errors import WorkflowError
from workflows.argo.hardening import lint_events
from workflows.argo.manifests import load_documents
from workflows.argo.references import Finding, TemplateIndex, as_list, as_map, lint_call, lint_template
from workflows.argo.schema import schema_faults

__all__ = ["Problem", "lint_document", "lint_files"]

_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
_TEMPLATE_TYPES = ("container", "script", "dag", "steps", "resource", "suspend", "data", "http", "containerSet",
                   "plugin")
_RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
_CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")
_CRON_DESCRIPTORS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


@dataclass(frozen=True)
class Problem:
    """One fault in one Argo object, located as precisely as the check knows."""

    file: str
    kind: str
    name: str
    template: str | None
    task: str | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        parts = [self.file, f"{self.kind}/{self.name}"]
        parts += [f"template {self.template}"] if self.template else []
        parts += [f"task {self.task}"] if self.task else []
        parts.append(self.message if self.severity == "error" else f"warning: {self.message}")
        return ": ".join(parts)


def lint_files(paths: Sequence[str | Path]) -> list[Problem]:
    """Lint every Argo workflow and Argo Events object in `paths`; other kinds (plain Kubernetes objects) are skipped.

    templateRefs resolve against the WorkflowTemplates of the given files and of any argo/*.yaml beside them.

    Raises:
        WorkflowError: a file cannot be read or parsed (see `load_documents`).
    """
    docs = load_documents(paths)
    templates_by_name = _templates_by_name(_neighbours(paths)) | _templates_by_name(docs)
    problems: list[Problem] = []
    for file, doc in docs:
        problems += lint_document(file, doc, templates_by_name=templates_by_name)
    return problems


def lint_document(
    file: str, doc: Mapping[str, Any], *, templates_by_name: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Problem]:
    """Lint one Argo Workflow, WorkflowTemplate, ClusterWorkflowTemplate or CronWorkflow document.

    Args:
        file: where the document came from, for the messages.
        doc: the parsed document; other kinds yield no problems.
        templates_by_name: WorkflowTemplate documents by name to check templateRefs against; None skips them.

    Returns:
        Every problem found, errors and warnings, in document order.
    """
    kind = str(doc.get("kind", ""))
    if kind in ("EventSource", "Sensor"):  # Argo Events: the hardening checks only (no schema)
        name = str(as_map(doc.get("metadata")).get("name") or "<unnamed>")
        return [Problem(file, kind, name, None, None, message) for message in lint_events(doc)]
    if kind not in _KINDS:
        return []
    meta = as_map(doc.get("metadata"))
    name = str(meta.get("name") or meta.get("generateName") or "<unnamed>")
    findings = list(_lint_schema(doc))
    spec = as_map(doc.get("spec"))
    if kind == "CronWorkflow":
        findings += _lint_cron(spec)
        spec = as_map(spec.get("workflowSpec"))
    findings += _lint_spec(spec, kind, templates_by_name)
    return [Problem(file, kind, name, f.template, f.task, f.message, "warning" if f.severity == "warning" else "error")
            for f in dict.fromkeys(findings)]


def _neighbours(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """The documents of argo/*.yaml next to the given files (or of their own folder when it is argo/)."""
    folders = {p if p.is_dir() else p.parent for p in map(Path, paths)}
    files = {f for d in folders for f in [*d.glob("argo/*.yaml"), *(d.glob("*.yaml") if d.name == "argo" else [])]}
    docs: list[tuple[str, dict[str, Any]]] = []
    for file in sorted(files):
        try:
            docs += load_documents([file])
        except WorkflowError:
            continue  # a broken neighbour is reported when it is linted itself
    return docs


def _templates_by_name(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Mapping[str, Any]]:
    return {
        str(as_map(doc.get("metadata")).get("name")): doc
        for _, doc in docs
        if doc.get("kind") in ("WorkflowTemplate", "ClusterWorkflowTemplate")
    }


def _lint_schema(doc: Mapping[str, Any]) -> Iterator[Finding]:
    """The document has the shape, and only the fields, of its kind in the Argo release the project targets."""
    if not str(doc.get("apiVersion", "")).startswith("argoproj.io/"):
        yield Finding(None, None, f"schema: apiVersion {doc.get('apiVersion')!r} is not argoproj.io/v1alpha1")
    for fault in schema_faults(str(doc["kind"]), doc):
        text = f"schema: {_path(fault.location) or '<root>'}: {fault.message}"
        yield Finding(_template_at(doc, fault.location), None, text, fault.severity)


def _path(loc: Sequence[int | str]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _template_at(doc: Mapping[str, Any], loc: Sequence[int | str]) -> str | None:
    """The name of the template a schema error sits in, if it sits in one."""
    spec = as_map(doc.get("spec"))
    if tuple(loc[:2]) == ("spec", "workflowSpec"):
        spec, loc = as_map(spec.get("workflowSpec")), loc[1:]
    if len(loc) > 2 and tuple(loc[:2]) == ("spec", "templates") and isinstance(loc[2], int):
        templates = as_list(spec.get("templates"))
        name = as_map(templates[loc[2]]).get("name") if loc[2] < len(templates) else None
        return str(name) if name is not None else None
    return None


def _lint_cron(spec: Mapping[str, Any]) -> list[Finding]:
    """Schedules parse as Argo's cron does, the timezone is an IANA zone, concurrencyPolicy is known."""
    schedules = as_list(spec.get("schedules")) or ([spec["schedule"]] if spec.get("schedule") else [])
    out = [] if schedules else [Finding(None, None, "cron: no schedule: set spec.schedules")]
    for schedule in schedules:
        reason = _schedule_fault(str(schedule))
        if reason:
            out.append(Finding(None, None, f"cron: schedule {schedule!r} {reason}"))
    timezone = spec.get("timezone")
    if timezone:
        try:
            zoneinfo.ZoneInfo(str(timezone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            out.append(Finding(None, None, f"cron: timezone {timezone!r} is not an IANA time zone (e.g. Europe/Paris)"))
    policy = spec.get("concurrencyPolicy")
    if policy is not None and policy not in _CONCURRENCY_POLICIES:
        out.append(Finding(None, None, f"cron: concurrencyPolicy {policy!r} is not one of "
                                       f"{', '.join(_CONCURRENCY_POLICIES)}"))
    return out


def _schedule_fault(schedule: str) -> str | None:
    """None when `schedule` is a 5-field cron line or a descriptor Argo's cron library accepts."""
    text = schedule.strip()
    if text.startswith("@every "):
        ok = bool(_GO_DURATION.match(text.removeprefix("@every ").strip()))
        return None if ok else "has an @every duration that is not a Go duration such as 1h30m"
    if text.startswith("@"):
        return None if text in _CRON_DESCRIPTORS else f"is not one of {', '.join(sorted(_CRON_DESCRIPTORS))}"
    if len(text.split()) != 5:
        return f"has {len(text.split())} fields; a cron schedule has 5 (minute hour day-of-month month day-of-week)"
    return None if croniter.is_valid(text) else "does not parse as a cron expression"


def _lint_spec(
    spec: Mapping[str, Any], kind: str, templates_by_name: Mapping[str, Mapping[str, Any]] | None
) -> list[Finding]:
    """The workflow-level checks, then each template's."""
    templates = [t for t in as_list(spec.get("templates")) if isinstance(t, Mapping)]
    local: dict[str, Mapping[str, Any]] = {}
    out: list[Finding] = []
    for template in templates:
        name = str(template.get("name"))
        if name in local:
            out.append(Finding(name, None, f"duplicate template name {name}"))
        local.setdefault(name, template)
    params = frozenset(str(as_map(p).get("name")) for p in as_list(as_map(spec.get("arguments")).get("parameters")))
    index = TemplateIndex(local, params, templates_by_name)
    out += _lint_entry(spec, kind, index)
    out += [Finding(None, None, f"retryStrategy: {m}") for m in _retry_faults(spec.get("retryStrategy"))]
    for template in templates:
        out += _lint_template_shape(template)
        out += lint_template(template, index)
    return out


def _lint_entry(spec: Mapping[str, Any], kind: str, index: TemplateIndex) -> list[Finding]:
    """The entrypoint, workflowTemplateRef, onExit and workflow-level hooks."""
    ref = as_map(spec.get("workflowTemplateRef"))
    out: list[Finding] = []
    if ref:
        if index.external is not None and str(ref.get("name")) not in index.external:
            out.append(Finding(None, None, f"workflowTemplateRef names WorkflowTemplate {ref.get('name')}, not "
                                           "among the linted files", "warning"))
    elif spec.get("entrypoint") is not None:
        entry = {"template": spec["entrypoint"], "arguments": spec.get("arguments", {})}
        out += lint_call(None, None, entry, index, "entrypoint")
    elif kind in ("Workflow", "CronWorkflow"):
        out.append(Finding(None, None, "spec.entrypoint is required (or use workflowTemplateRef)"))
    if spec.get("onExit") is not None and str(spec["onExit"]) not in index.templates:
        out.append(Finding(None, None, f"onExit references template {spec['onExit']} which does not exist"))
    for hook_name, hook in as_map(spec.get("hooks")).items():
        out += lint_call(None, f"hooks.{hook_name}", {k: v for k, v in as_map(hook).items() if k != "expression"},
                         index)
    return out


def _lint_template_shape(template: Mapping[str, Any]) -> list[Finding]:
    """Exactly one template type, and a sound retryStrategy."""
    name = str(template.get("name")) if template.get("name") else None
    out = [] if name else [Finding(None, None, "a template has no name")]
    present = [key for key in _TEMPLATE_TYPES if template.get(key) is not None]
    if not present:
        out.append(Finding(name, None, f"template has no type: set one of {', '.join(_TEMPLATE_TYPES)}"))
    elif len(present) > 1:
        out.append(Finding(name, None, f"template has more than one type ({', '.join(present)}); keep one"))
    out += [Finding(name, None, f"retryStrategy: {m}") for m in _retry_faults(template.get("retryStrategy"))]
    return out


def _retry_faults(strategy: Any) -> list[str]:
    """Why a retryStrategy would be refused: a non-integer limit or an unknown retryPolicy."""
    strategy = as_map(strategy)
    out: list[str] = []
    limit = strategy.get("limit")
    if limit is not None and not _int_like(limit):
        out.append(f"limit {limit!r} is not an integer (write it as a string such as \"2\")")
    policy = strategy.get("retryPolicy")
    if policy is not None and policy not in _RETRY_POLICIES:
        out.append(f"retryPolicy {policy!r} is not one of {', '.join(_RETRY_POLICIES)}")
    return out


def _int_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and (value.strip().isdigit() or "{{" in value)
