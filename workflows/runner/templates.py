"""Which template a call runs, and the value a declared parameter takes, as Argo's controller decides them.

Template context (Argo's `templateresolution.TemplateContext`): a `template: NAME` inside a template that came
from a WorkflowTemplate through `templateRef` names a template of *that* WorkflowTemplate, not of the workflow;
an `inline` template runs in the context of the template that holds it. A parameter's value is, in Argo's order,
the argument given, else its `value`, else `valueFrom.configMapKeyRef` (read from the run's ConfigMaps), else
its `default`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.runner.cluster import ClusterConfig, MissingConfig
from workflows.runner.nodes import Node

__all__ = [
    "OWNER",
    "TemplateResolver",
    "check_enum",
    "parameter_value",
    "path_placeholders",
    "template_outputs",
    "with_resolved_paths",
]

OWNER = "llmrelease.owner"  # the WorkflowTemplate a resolved template belongs to (not an Argo field)


class TemplateResolver:
    """The templates of one workflow and of the WorkflowTemplates it may reference."""

    def __init__(
        self, local: Mapping[str, Mapping[str, Any]], templates_by_name: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.local = local
        self.refs = templates_by_name

    def resolve(
        self, call: Mapping[str, Any], where: str, within: Mapping[str, Any] | None = None
    ) -> Mapping[str, Any]:
        """The template a task, step, hook or onExit `call` runs, called from template `within`.

        Raises:
            WorkflowError: the template does not exist where the call looks for it.
        """
        owner = str(within.get(OWNER)) if within and within.get(OWNER) else None
        if isinstance(call.get("inline"), Mapping):
            inline = {**call["inline"], "name": call["inline"].get("name") or str(call.get("name", "inline"))}
            return {**inline, OWNER: owner} if owner else inline
        if "templateRef" in call:
            ref = call["templateRef"]
            found = self._owned(str(ref.get("name")), str(ref.get("template")))
            if found is None:
                raise WorkflowError(
                    f"{where}: templateRef {ref.get('name')}/{ref.get('template')} not found; "
                    "render it into argo/ or pass its file"
                )
            return found
        name = str(call.get("template", ""))
        found = self._owned(owner, name) if owner else self.local.get(name)
        if found is None:
            place = f"WorkflowTemplate {owner}" if owner else "this workflow"
            raise WorkflowError(f"{where}: template {name!r} does not exist in {place}")
        return found

    def _owned(self, owner: str, name: str) -> Mapping[str, Any] | None:
        doc = self.refs.get(owner) or {}
        found = [t for t in doc.get("spec", {}).get("templates", []) if t.get("name") == name]
        return {**found[0], OWNER: owner} if found else None


def parameter_value(param: Mapping[str, Any], given: str | None, cluster: ClusterConfig, where: str) -> str | None:
    """A declared parameter's value: `given`, else value, else valueFrom.configMapKeyRef, else default.

    Raises:
        MissingConfig: the ConfigMap or key it reads is missing and not optional (CreateContainerConfigError).
    """
    if given is not None:
        return given
    if param.get("value") is not None:
        return str(param["value"])
    ref = (param.get("valueFrom") or {}).get("configMapKeyRef")
    if ref:
        try:
            found = cluster.key(
                "configmap", str(ref.get("name")), str(ref.get("key")), optional=bool(ref.get("optional"))
            )
        except MissingConfig as e:
            raise MissingConfig(f"{where}: {e}") from e
        if found is not None:
            return found
    if param.get("default") is not None:
        return str(param["default"])
    return None


def with_resolved_paths(tmpl: Mapping[str, Any], scope: Mapping[str, str]) -> Mapping[str, Any]:
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


def path_placeholders(tmpl: Mapping[str, Any]) -> dict[str, str]:
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


def check_enum(param: Mapping[str, Any], value: str, where: str) -> None:
    """Refuse a parameter value outside the parameter's `enum`, as Argo does at submission."""
    allowed = [str(v) for v in param.get("enum", []) or []]
    if allowed and value not in allowed:
        raise WorkflowError(f"{where}: value {value!r} is not one of {', '.join(allowed)}")


def template_outputs(tmpl: Mapping[str, Any], node: Node, scope: Mapping[str, str]) -> None:
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
