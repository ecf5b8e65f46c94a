"""Which template a call runs, and the value a declared parameter takes, as Argo's controller decides them.

Template context (Argo's `templateresolution.TemplateContext`): a `template: NAME` inside a template that came
from a WorkflowTemplate through `templateRef` names a template of *that* WorkflowTemplate, not of the workflow;
an `inline` template runs in the context of the template that holds it. A parameter's value is, in Argo's order,
the argument given, else its `value`, else `valueFrom.configMapKeyRef` (read from the run's ConfigMaps), else
its `default`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.runner.cluster import ClusterConfig, MissingConfig

__all__ = ["OWNER", "TemplateResolver", "parameter_value"]

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
