"""The variables a workflow's templates see: Argo's globals (`workflow.*`) and a template's input parameters."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute
from workflows.runner.cluster import ClusterConfig
from workflows.runner.templates import check_enum, parameter_value

__all__ = ["NAMESPACE", "template_inputs", "workflow_globals"]

NAMESPACE = "local"  # `workflow.namespace`, and the namespace of locks
_SCHEDULED_TIME = "workflows.argoproj.io/scheduled-time"  # the annotation `workflow.scheduledTime` reads


def workflow_globals(
    name: str, uid: str, workflow: Mapping[str, Any], given: dict[str, str], cluster: ClusterConfig
) -> dict[str, str]:
    """`workflow.*` of a new run: name, uid, labels/annotations, and `spec.arguments` with `given` (-p) applied.

    Raises:
        WorkflowError: A parameter has no value, is outside its enum, or `given` names an undeclared one.
    """
    spec: Mapping[str, Any] = workflow["spec"]
    metadata: Mapping[str, Any] = workflow.get("metadata") or {}
    scope = {
        "workflow.name": name,
        "workflow.uid": uid,
        "workflow.namespace": NAMESPACE,
        "workflow.serviceAccountName": str(spec.get("serviceAccountName", "default")),
        "workflow.mainEntrypoint": str(spec.get("entrypoint", "")),
        "workflow.status": "Running",  # the runtime values, as setGlobalRuntimeParameters (duration: the engine's)
        "workflow.duration": "0.000000",
        **_creation_timestamp(time.time()),
    }
    if spec.get("priority") is not None:
        scope["workflow.priority"] = str(int(spec["priority"]))
    scheduled = (metadata.get("annotations") or {}).get(_SCHEDULED_TIME)
    if scheduled is not None:
        scope["workflow.scheduledTime"] = str(scheduled)
    for kind in ("labels", "annotations"):  # workflow.labels.<NAME>, .json and (deprecated) the bare JSON
        notes = {str(k): str(v) for k, v in (metadata.get(kind) or {}).items()}
        scope |= {f"workflow.{kind}.{k}": v for k, v in notes.items()}
        scope[f"workflow.{kind}"] = scope[f"workflow.{kind}.json"] = json.dumps(notes)
    declared = spec.get("arguments", {}).get("parameters", [])
    for param in declared:
        param_name = str(param["name"])
        where = f"workflow parameter {param_name!r}"
        value = parameter_value(param, given.pop(param_name, None), cluster, where)
        if value is None:
            raise WorkflowError(f"{where} has no value; pass -p {param_name}=VALUE")
        check_enum(param, str(value), where)
        scope[f"workflow.parameters.{param_name}"] = str(value)
    if given:
        known = ", ".join(str(p["name"]) for p in declared) or "none"
        raise WorkflowError(f"unknown parameter(s) {', '.join(sorted(given))}: this workflow takes {known}")
    scope["workflow.parameters"] = scope["workflow.parameters.json"] = json.dumps(  # both, as operator.go
        [{"name": k.split(".", 2)[2], "value": v} for k, v in scope.items() if k.startswith("workflow.param")]
    )
    return scope


def _creation_timestamp(now: float) -> dict[str, str]:
    """`workflow.creationTimestamp` (RFC 3339, UTC, whole seconds), `.RFC3339`, `.s` and `.<c>` per strftime char."""
    stamp = time.gmtime(int(now))
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)
    scope = {
        "workflow.creationTimestamp": rfc3339,
        "workflow.creationTimestamp.RFC3339": rfc3339,
        "workflow.creationTimestamp.s": str(int(now)),
    }
    scope |= {f"workflow.creationTimestamp.{c}": time.strftime(f"%{c}", stamp) for c in "BbmAadHIMSYyp"}
    scope |= {  # Go's layouts for these (util/strftime): "MST", "-0700", ".000" of a UTC time of whole seconds
        "workflow.creationTimestamp.Z": "UTC",
        "workflow.creationTimestamp.z": "+0000",
        "workflow.creationTimestamp.L": ".000",
    }
    return scope


def template_inputs(
    tmpl: Mapping[str, Any], args: Mapping[str, str], cluster: ClusterConfig, globals_: Mapping[str, str]
) -> dict[str, str]:
    """The template's input parameters: arguments, else value/default; enums checked.

    A template's own `value` sees the globals, as Argo's ProcessArgs substitutes them.

    Raises:
        WorkflowError: A parameter has no value or is outside its enum.
    """
    values: dict[str, str] = {}
    for param in tmpl.get("inputs", {}).get("parameters", []):
        name = str(param["name"])
        where = f"template {tmpl['name']}: input {name!r}"
        value = parameter_value(param, args.get(name), cluster, where)
        if value is None:
            raise WorkflowError(
                f"template {tmpl['name']}: input parameter {name!r} has no value; "
                "pass it as an argument or give it a default"
            )
        if name not in args and "{{" in str(value):
            value = substitute(str(value), globals_, where=where, strict=False)
        values[name] = str(value)
        check_enum(param, values[name], where)
    return values
