"""A scripted Kubernetes API for the cluster plane's tests: recorded Argo Rollouts behaviour, no cluster here.

`RecordedCluster` answers the calls of `kubernetes.client.CustomObjectsApi` and `CoreV1Api` the plane makes the way
the API server does (404 for a missing object, 409 for a duplicate or a failed JSON-patch `test`, JSON and merge
patches, a status subresource, generation bumped on spec changes) and plays back, one per read of the Rollout, the
statuses the Argo Rollouts v1.5 controller writes (the `*_status` helpers: field names and messages as the
controller sets them). Every call is recorded as (API group, resource, verb), to be compared with the Role.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ApiException", "RecordedCluster", "analysis_run", "rollout_status"]


class ApiException(Exception):
    """What `kubernetes.client.ApiException` carries that the plane reads: status and reason."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"({status}) Reason: {reason}")
        self.status = status
        self.reason = reason


def rollout_status(
    phase: str,
    *,
    step: int,
    canary_weight: int,
    stable: str = "stable01",
    current: str = "canary02",
    message: str = "",
    abort: bool = False,
    paused_for: str | None = None,
    analysis: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A Rollout `status` as the controller writes it during a canary with traffic routing."""
    status: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "currentPodHash": current,
        "stableRS": stable,
        "currentStepIndex": step,
        "canary": {
            "weights": {
                "canary": {"podTemplateHash": current, "serviceName": "demo-qa-canary", "weight": canary_weight},
                "stable": {"podTemplateHash": stable, "serviceName": "demo-qa-stable", "weight": 100 - canary_weight},
            }
        },
        "replicas": 2,
        "readyReplicas": 2,
    }
    if analysis:
        status["canary"]["currentStepAnalysisRunStatus"] = {"name": analysis[0], "status": analysis[1]}
    if abort:
        status["abort"] = True
        status["abortedAt"] = "2026-11-30T22:00:00Z"
    if paused_for:
        status["pauseConditions"] = [{"reason": paused_for, "startTime": "2026-11-30T22:00:00Z"}]
        status["controllerPause"] = True
    return status


def analysis_run(
    name: str, rollout: str, phase: str, metrics: dict[str, list[tuple[str, str | None]]], message: str = ""
) -> dict[str, Any]:
    """An AnalysisRun the controller created for a step: owned by the Rollout, measurements per metric."""
    results = [
        {
            "name": metric,
            "phase": measurements[-1][0] if measurements else "Pending",
            "count": len(measurements),
            "measurements": [
                {"phase": p, "value": v, "startedAt": "2026-11-30T22:00:00Z", "finishedAt": "2026-11-30T22:00:02Z"}
                for p, v in measurements
            ],
        }
        for metric, measurements in metrics.items()
    ]
    status: dict[str, Any] = {"phase": phase, "metricResults": results}
    if message:
        status["message"] = message
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisRun",
        "metadata": {
            "name": name,
            "namespace": "llmrelease",
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": rollout}],
        },
        "status": status,
    }


class RecordedCluster:
    """CustomObjectsApi + CoreV1Api stand-in with a scripted Argo Rollouts controller."""

    def __init__(self) -> None:
        """Empty namespace; no script."""
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.script: list[dict[str, Any]] = []
        self.refuse: dict[tuple[str, str], int] = {}
        self._version = 0

    # --- the controller ---------------------------------------------------------------------------------------
    def controller_writes(self, *statuses: dict[str, Any], stale: bool = False) -> None:
        """Queue statuses, one per read of the Rollout; `stale` ones carry the previous observedGeneration."""
        for status in statuses:
            self.script.append({**status, "_stale": stale})

    def add(self, plural: str, doc: dict[str, Any]) -> None:
        """Put an object there as the controller would (AnalysisRuns)."""
        self.objects[(plural, doc["metadata"]["name"])] = copy.deepcopy(doc)

    # --- CustomObjectsApi ---------------------------------------------------------------------------------------
    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        """GET, with the next scripted status applied to a Rollout."""
        self._call(group, plural, "get")
        found = self.objects.get((plural, name))
        if found is None:
            raise ApiException(404, "Not Found")
        if plural == "rollouts" and self.script:
            status = dict(self.script.pop(0))
            generation = found["metadata"]["generation"]
            status["observedGeneration"] = str(generation - 1 if status.pop("_stale") else generation)
            found["status"] = status
        return copy.deepcopy(found)

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: Any) -> Any:
        """POST: 409 when it exists."""
        self._call(group, plural, "create")
        key = (plural, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(409, "AlreadyExists")
        doc = copy.deepcopy(body)
        doc["metadata"].update(generation=1, resourceVersion=self._next())
        self.objects[key] = doc
        return copy.deepcopy(doc)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        """PATCH: a list is a JSON patch (test/replace/add), a dict a merge patch; spec changes bump generation."""
        self._call(group, plural, "patch")
        doc = self._existing(plural, name)
        before = copy.deepcopy(doc.get("spec"))
        if isinstance(body, list):
            for op in body:
                _json_patch(doc, op)
        else:
            _merge(doc, body)
        if doc.get("spec") != before:
            doc["metadata"]["generation"] += 1
        doc["metadata"]["resourceVersion"] = self._next()
        return copy.deepcopy(doc)

    def patch_namespaced_custom_object_status(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        """PATCH on the status subresource: only `status` changes."""
        self._call(group, f"{plural}/status", "patch")
        doc = self._existing(plural, name)
        _merge(doc, {"status": body["status"]})
        return copy.deepcopy(doc)

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str) -> Any:
        """LIST."""
        self._call(group, plural, "list")
        return {"items": [copy.deepcopy(d) for (p, _), d in self.objects.items() if p == plural]}

    # --- CoreV1Api ------------------------------------------------------------------------------------------------
    def read_namespaced_service(self, name: str, namespace: str) -> Any:
        """GET a Service."""
        self._call("", "services", "get")
        return copy.deepcopy(self._existing("services", name))

    def create_namespaced_service(self, namespace: str, body: Any) -> Any:
        """POST a Service."""
        self._call("", "services", "create")
        self.objects[("services", body["metadata"]["name"])] = copy.deepcopy(body)
        return body

    def patch_namespaced_service(self, name: str, namespace: str, body: Any) -> Any:
        """PATCH a Service (the plane must never call it)."""
        self._call("", "services", "patch")
        raise AssertionError("the cluster plane patched a Service: the controller owns its selector")

    # --- helpers --------------------------------------------------------------------------------------------------
    def _call(self, group: str, resource: str, verb: str) -> None:
        self.calls.append((group, resource, verb))
        status = self.refuse.get((resource, verb))
        if status:
            raise ApiException(status, {403: "Forbidden", 422: "Unprocessable Entity"}.get(status, "Error"))

    def _existing(self, plural: str, name: str) -> dict[str, Any]:
        found = self.objects.get((plural, name))
        if found is None:
            raise ApiException(404, "Not Found")
        return found

    def _next(self) -> str:
        self._version += 1
        return str(self._version)


def _pointer(doc: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = doc
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def _json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    parent, key = _pointer(doc, op["path"])
    if op["op"] == "test":
        if parent.get(key) != op["value"]:
            raise ApiException(409, "Conflict")
    elif op["op"] in ("replace", "add"):
        if op["op"] == "replace" and key not in parent:
            raise ApiException(422, "Unprocessable Entity")
        parent[key] = copy.deepcopy(op["value"])
    else:
        raise AssertionError(f"unexpected JSON patch op {op}")


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
