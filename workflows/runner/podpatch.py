"""`podSpecPatch` applied locally, as Argo's controller applies it (workflow/controller/workflowpod.go).

Argo builds the pod, then strategic-merge-patches its spec with the workflow's `spec.podSpecPatch` and then the
template's (each a YAML or JSON string, after parameter substitution). Locally the pod spec is the template's
main container (named `main`) plus the pod-level fields a template carries; after the patch the main container
becomes the template's `container` (or `script`) again, so its env, command, args, image and resources are what
the process runs with, and the pod-level fields (and the resources) are recorded on the node.

Strategic merge, as Kubernetes does it for a PodSpec: maps merge key by key (`null` deletes a key), lists of
containers, env, volumes, volumeMounts and ports merge element by element on their merge key, any other list is
replaced, and the directives `$patch: replace` (a map) and `$patch: delete` (a list element) are honoured.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute

__all__ = ["POD_FIELDS", "patch_template", "strategic_merge"]

MAIN = "main"  # Argo's name for the template's container
POD_FIELDS = (
    "activeDeadlineSeconds",
    "affinity",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
    "schedulerName",
    "serviceAccountName",
    "securityContext",
    "hostAliases",
    "dnsPolicy",
    "dnsConfig",
    "automountServiceAccountToken",
)
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """`patch` merged onto `base` (neither changed) with Kubernetes' strategic-merge rules for a PodSpec."""
    if isinstance(patch, Mapping) and isinstance(base, Mapping):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        merged = dict(copy.deepcopy(base))
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list) and isinstance(base, list) and field in _MERGE_KEYS:
        return _merge_list(base, patch, _MERGE_KEYS[field])
    return copy.deepcopy(patch)


def _merge_list(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in base]
    for item in patch:
        if not isinstance(item, Mapping) or key not in item:
            merged.append(copy.deepcopy(item))
            continue
        at = next((i for i, old in enumerate(merged) if isinstance(old, Mapping) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            merged = [old for i, old in enumerate(merged) if i != at]
        elif at is None:
            merged.append({k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")})
        else:
            merged[at] = strategic_merge(merged[at], item)
    return merged


def _parse(text: str, where: str) -> Mapping[str, Any]:
    try:
        patch = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WorkflowError(f"{where}: podSpecPatch is neither YAML nor JSON ({e}); write a PodSpec fragment") from e
    if patch is None:
        return {}
    if not isinstance(patch, Mapping):
        raise WorkflowError(f"{where}: podSpecPatch must be a PodSpec mapping, got {type(patch).__name__}")
    return patch


def patch_template(
    tmpl: Mapping[str, Any], workflow_patch: str | None, scope: Mapping[str, str]
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The template with the workflow's and its own `podSpecPatch` applied, and the pod fields to record.

    Returns:
        (the template to run, the patched pod spec's pod-level fields plus the main container's `resources`);
        the template itself and {} when there is no patch.

    Raises:
        WorkflowError: A patch does not parse, is not a mapping, or removes the main container.
    """
    where = f"template {tmpl.get('name')}"
    patches = [p for p in (workflow_patch, tmpl.get("podSpecPatch")) if p]
    kind = "script" if "script" in tmpl else "container" if "container" in tmpl else ""
    if not patches or not kind:
        return tmpl, {}
    pod: dict[str, Any] = {k: copy.deepcopy(tmpl[k]) for k in POD_FIELDS if k in tmpl}
    main = {k: v for k, v in dict(tmpl[kind]).items() if k != "source"}
    pod["containers"] = [{**copy.deepcopy(main), "name": MAIN}]
    for text in patches:
        pod = strategic_merge(pod, _parse(substitute(str(text), scope, where=f"{where}: podSpecPatch"), where))
    container = next((c for c in pod.get("containers", []) if c.get("name") == MAIN), None)
    if container is None:
        raise WorkflowError(f"{where}: podSpecPatch removes the main container; patch it, never delete it")
    body = {k: v for k, v in container.items() if k != "name" or "name" in tmpl[kind]}
    if "source" in tmpl[kind]:
        body["source"] = tmpl[kind]["source"]
    recorded = {k: pod[k] for k in POD_FIELDS if k in pod}
    patched = {**{k: v for k, v in tmpl.items() if k not in POD_FIELDS}, kind: body, **recorded}
    if container.get("resources"):
        recorded["resources"] = container["resources"]
    return patched, recorded
