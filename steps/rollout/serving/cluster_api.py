"""The Kubernetes calls of the cluster plane: Rollouts, AnalysisTemplates, AnalysisRuns, Services, the HTTPRoute.

`ClusterObjects` wraps the official client's `CustomObjectsApi` and `CoreV1Api` (anything with the same methods:
the Protocols below) for one namespace, and turns every API refusal into a one-line `ServingError` naming the
object and the fix (RBAC in infrastructure/base/rbac.yaml, a missing CRD, a conflict, a rejected manifest).
"""

from __future__ import annotations

from typing import Any, Protocol

from steps.core.kube import api_error_fix, api_status, describe_api_error
from steps.rollout.serving.base import ServingError
from steps.rollout.serving.kubernetes import CoreApi

__all__ = ["ROLLOUTS_GROUP", "ClusterObjects", "CoreApi", "CustomObjectsApi"]

ROLLOUTS_GROUP, ROLLOUTS_VERSION = "argoproj.io", "v1alpha1"
_GATEWAY = ("gateway.networking.k8s.io", "v1", "httproutes")
_NOT_FOUND = 404


class CustomObjectsApi(Protocol):
    """The calls of `kubernetes.client.CustomObjectsApi` the cluster plane uses."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        """Return the object as a dict; raise with `status == 404` when there is none."""
        ...

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: Any) -> Any:
        """Create the object."""
        ...

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        """Patch the object: a dict is sent as a JSON merge patch, a list as a JSON patch."""
        ...

    def patch_namespaced_custom_object_status(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        """Patch the object's status subresource (a JSON merge patch for a dict)."""
        ...

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str) -> Any:
        """Return `{"items": [...]}`."""
        ...


class ClusterObjects:
    """Get, create, patch and list the plane's objects in one namespace."""

    def __init__(self, custom: CustomObjectsApi, core: CoreApi, namespace: str) -> None:
        """Bind the clients to `namespace`."""
        self._custom = custom
        self._core = core
        self.namespace = namespace

    def get_rollout(self, name: str) -> dict[str, Any] | None:
        """The Rollout as a dict, or None when there is none."""
        try:
            found = self._custom.get_namespaced_custom_object(
                ROLLOUTS_GROUP, ROLLOUTS_VERSION, self.namespace, "rollouts", name
            )
        except Exception as e:  # kubernetes.client.ApiException, urllib3 errors, ...
            if api_status(e) == _NOT_FOUND:
                return None
            raise self._error("Rollout", name, "reading it", e) from e
        if not isinstance(found, dict):
            raise ServingError(f"Rollout {self.namespace}/{name}: the API returned {type(found).__name__}")
        return found

    def create_custom(self, plural: str, doc: dict[str, Any]) -> str:
        """Create an argoproj.io object; return "created"."""
        try:
            self._custom.create_namespaced_custom_object(ROLLOUTS_GROUP, ROLLOUTS_VERSION, self.namespace, plural, doc)
        except Exception as e:  # see get_rollout
            raise self._error(doc["kind"], doc["metadata"]["name"], "creating it", e) from e
        return "created"

    def upsert_custom(self, plural: str, doc: dict[str, Any]) -> str:
        """Create an argoproj.io object, or replace its spec when it exists; return what was done."""
        name = doc["metadata"]["name"]
        try:
            self._custom.get_namespaced_custom_object(ROLLOUTS_GROUP, ROLLOUTS_VERSION, self.namespace, plural, name)
        except Exception as e:  # see get_rollout
            if api_status(e) == _NOT_FOUND:
                return self.create_custom(plural, doc)
            raise self._error(doc["kind"], name, "reading it", e) from e
        self.patch_custom(plural, name, [{"op": "replace", "path": "/spec", "value": doc["spec"]}], doc["kind"])
        return "replaced"

    def patch_custom(self, plural: str, name: str, body: Any, kind: str = "Rollout") -> None:
        """Patch an argoproj.io object (a list: JSON patch; a dict: merge patch)."""
        try:
            self._custom.patch_namespaced_custom_object(
                ROLLOUTS_GROUP, ROLLOUTS_VERSION, self.namespace, plural, name, body
            )
        except Exception as e:  # see get_rollout
            raise self._error(kind, name, "patching it", e) from e

    def patch_status(self, name: str, body: dict[str, Any]) -> None:
        """Merge-patch a Rollout's status subresource, as `kubectl argo rollouts` does."""
        try:
            self._custom.patch_namespaced_custom_object_status(
                ROLLOUTS_GROUP, ROLLOUTS_VERSION, self.namespace, "rollouts", name, body
            )
        except Exception as e:  # see get_rollout
            raise self._error("Rollout", name, "patching its status", e) from e

    def list_custom(self, plural: str) -> list[dict[str, Any]]:
        """Every argoproj.io object of a kind in the namespace."""
        try:
            found = self._custom.list_namespaced_custom_object(ROLLOUTS_GROUP, ROLLOUTS_VERSION, self.namespace, plural)
        except Exception as e:  # see get_rollout
            raise self._error(plural, "*", "listing them", e) from e
        items = found.get("items") if isinstance(found, dict) else None
        return [item for item in items or [] if isinstance(item, dict)]

    def create_once(self, kind: str, doc: dict[str, Any]) -> str:
        """Create a Service or the HTTPRoute when absent; never patch it (the controller owns it afterwards)."""
        name = doc["metadata"]["name"]
        if kind not in ("Service", "HTTPRoute"):
            raise ServingError(f"{kind} {self.namespace}/{name}: the plane creates only Services and HTTPRoutes")
        try:
            self._read(kind, name)
            return "exists (left to the controller)"
        except Exception as e:  # see get_rollout
            if api_status(e) != _NOT_FOUND:
                raise self._error(kind, name, "reading it", e) from e
        try:
            self._create(kind, doc)
        except Exception as e:  # see get_rollout
            raise self._error(kind, name, "creating it", e) from e
        return "created"

    def _read(self, kind: str, name: str) -> Any:
        if kind == "Service":
            return self._core.read_namespaced_service(name=name, namespace=self.namespace)
        return self._custom.get_namespaced_custom_object(*_GATEWAY[:2], self.namespace, _GATEWAY[2], name)

    def _create(self, kind: str, doc: dict[str, Any]) -> Any:
        if kind == "Service":
            return self._core.create_namespaced_service(namespace=self.namespace, body=doc)
        return self._custom.create_namespaced_custom_object(*_GATEWAY[:2], self.namespace, _GATEWAY[2], doc)

    def _error(self, kind: str, name: str, doing: str, error: Exception) -> ServingError:
        fix = api_error_fix(
            error,
            {
                403: f"grant the step's ServiceAccount this verb on {kind} (infrastructure/base/rbac.yaml)",
                404: f"install the {kind} CRD (Argo Rollouts, Gateway API) or create namespace {self.namespace}",
                409: "another writer changed the object: run the command again",
                422: "the API server rejected the manifest: check infrastructure/serving/vllm-rollout.yaml",
            },
        )
        return ServingError(f"{kind} {self.namespace}/{name}: {doing} failed ({describe_api_error(error)}): {fix}")
