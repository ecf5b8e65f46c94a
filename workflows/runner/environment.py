"""A pod's environment as Kubernetes and Argo give it: nothing from the machine that runs the runner.

In order, later sources winning (as the kubelet builds it): the image's ENV; HOSTNAME (the pod name); the
template's `envFrom` (ConfigMaps and Secrets, each with its `prefix`, `optional` allowed); its `env` (`value`, with
Kubernetes' `$(VAR)` references to earlier variables expanded, or `valueFrom`: `configMapKeyRef`, `secretKeyRef`,
`fieldRef`); then what Argo's controller adds to the main container (ARGO_CONTAINER_NAME, ARGO_TEMPLATE,
ARGO_NODE_ID, ARGO_INCLUDE_SCRIPT_OUTPUT, ARGO_DEADLINE, ARGO_WORKFLOW_NAME; workflow/controller/workflowpod.go).
A missing ConfigMap, Secret or key raises `MissingConfig` (Kubernetes: CreateContainerConfigError).
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.runner.cluster import ClusterConfig

__all__ = ["FIELD_PATHS", "env_from_sources", "expand_references", "pod_environment"]

FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
    "metadata.labels['KEY']",
    "metadata.annotations['KEY']",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
)
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_NO_DEADLINE = "0001-01-01T00:00:00Z"  # Go's zero time, what Argo writes when a pod has no deadline


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined variable's value, `$$` an escaped `$`, anything else as is."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(one, text)


def pod_environment(
    template: Mapping[str, Any],
    scope: Mapping[str, str],
    cluster: ClusterConfig,
    image_env: Mapping[str, str],
    deadline_s: float | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of the pod running `template` (a container or script template), and the container's own.

    Returns:
        (the whole environment, the variables of the container spec: what `$(VAR)` in command/args may name).

    Raises:
        MissingConfig: A ConfigMap, Secret or key it names is missing and not optional.
        WorkflowError: A `valueFrom` the local runner cannot resolve (an unknown fieldRef, resourceFieldRef).
    """
    body = template.get("script") or template.get("container") or {}
    pod = str(scope.get("pod.name", ""))
    declared: dict[str, str] = {}  # what the container spec gives: the references of `$(VAR)` see only these
    for source in body.get("envFrom", []) or []:
        declared.update(_env_from(source, cluster))
    for item in body.get("env", []) or []:
        name = str(item["name"])
        where = f"template {template.get('name')}: env {name}"
        if "valueFrom" in item:
            value = _value_from(item["valueFrom"], template, scope, cluster, where)
            if value is None:
                continue
        else:
            raw = substitute(str(item.get("value", "")), scope, where=where)
            value = expand_references(raw, declared)
        declared[name] = value
    declared.update(_argo_variables(template, scope, deadline_s))
    return {**image_env, "HOSTNAME": pod, **declared}, declared


def env_from_sources(template: Mapping[str, Any], cluster: ClusterConfig) -> dict[str, str]:
    """What the template's `envFrom` (ConfigMaps and Secrets, in order, later ones winning) gives the container.

    Raises:
        MissingConfig: A ConfigMap or Secret it names is missing and not optional.
    """
    body = template.get("script") or template.get("container") or {}
    found: dict[str, str] = {}
    for source in body.get("envFrom", []) or []:
        found.update(_env_from(source, cluster))
    return found


def _env_from(source: Mapping[str, Any], cluster: ClusterConfig) -> dict[str, str]:
    prefix = str(source.get("prefix", "") or "")
    if "configMapRef" in source:
        ref = source["configMapRef"]
        data = cluster.config_map(str(ref.get("name")), optional=bool(ref.get("optional")))
    elif "secretRef" in source:
        ref = source["secretRef"]
        data = cluster.secret(str(ref.get("name")), optional=bool(ref.get("optional")))
    else:
        raise WorkflowError(f"envFrom {dict(source)}: name a configMapRef or a secretRef")
    # Kubernetes skips keys that are not valid variable names (and reports an event); so do we.
    return {prefix + k: v for k, v in data.items() if _ENV_NAME.fullmatch(prefix + k)}


def _value_from(
    source: Mapping[str, Any], template: Mapping[str, Any], scope: Mapping[str, str], cluster: ClusterConfig, where: str
) -> str | None:
    for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
        if key in source:
            ref = {k: substitute(str(v), scope, where=where) for k, v in source[key].items()}
            optional = ref.get("optional", "").lower() == "true"
            return cluster.key(kind, ref.get("name", ""), ref.get("key", ""), optional=optional)
    if "fieldRef" in source:
        return _field(str(source["fieldRef"].get("fieldPath", "")), template, scope, where)
    raise WorkflowError(
        f"{where}: valueFrom {sorted(source)} is not supported by the local runner; use value, "
        "configMapKeyRef, secretKeyRef or fieldRef"
    )


def _field(path: str, template: Mapping[str, Any], scope: Mapping[str, str], where: str) -> str:
    """The Downward API fields Argo users rely on, with the values a local pod has."""
    pod = str(scope.get("pod.name", ""))
    labels, annotations = _metadata(template, scope)
    simple = {
        "metadata.name": pod,
        "metadata.namespace": str(scope.get("workflow.namespace", "default")),
        "metadata.uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.get('workflow.uid', '')}/{pod}")),
        "spec.nodeName": socket.gethostname(),
        "spec.serviceAccountName": str(
            template.get("serviceAccountName") or scope.get("workflow.serviceAccountName", "default")
        ),
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "metadata.labels": _render(labels),
        "metadata.annotations": _render(annotations),
    }
    if path in simple:
        return simple[path]
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        return (labels if keyed.group(1) == "labels" else annotations).get(keyed.group(2), "")
    raise WorkflowError(
        f"{where}: fieldRef {path!r} is not one the local runner knows; use one of {', '.join(FIELD_PATHS)}"
    )


def _metadata(template: Mapping[str, Any], scope: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The pod's labels and annotations: the template's `metadata` plus those Argo's controller sets."""
    meta = template.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    labels.update(
        {
            "workflows.argoproj.io/workflow": str(scope.get("workflow.name", "")),
            "workflows.argoproj.io/completed": "false",
        }
    )
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    annotations.update(
        {
            "workflows.argoproj.io/node-name": str(scope.get("node.name", "")),
            "workflows.argoproj.io/node-id": str(scope.get("pod.name", "")),
        }
    )
    return labels, annotations


def _render(items: Mapping[str, str]) -> str:
    return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))


def _argo_variables(template: Mapping[str, Any], scope: Mapping[str, str], deadline_s: float | None) -> dict[str, str]:
    simplified = {k: v for k, v in template.items() if k != "inputs"}
    if (template.get("inputs") or {}).get("artifacts"):
        simplified["inputs"] = {"artifacts": template["inputs"]["artifacts"]}
    deadline = (
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + deadline_s))
        if deadline_s is not None
        else _NO_DEADLINE
    )
    return {
        "ARGO_CONTAINER_NAME": "main",
        "ARGO_TEMPLATE": json.dumps(simplified, separators=(",", ":")),
        "ARGO_NODE_ID": str(scope.get("pod.name", "")),
        "ARGO_INCLUDE_SCRIPT_OUTPUT": "true",
        "ARGO_DEADLINE": deadline,
        "ARGO_WORKFLOW_NAME": str(scope.get("workflow.name", "")),
    }
