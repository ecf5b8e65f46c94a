"""`GatewayRouter`: the traffic split on a cluster, the backendRefs weights of a Gateway API HTTPRoute.

The router reads the HTTPRoute, validates the requested split against the names of the rule's backendRefs, and
writes every weight in one JSON merge patch through the official Kubernetes client's `CustomObjectsApi`. The
patch carries the resourceVersion it was computed from, so a concurrent edit makes the API server answer 409
instead of being overwritten; the router then re-reads and tries again a few times.

On the cluster serving plane (`steps.rollout.serving.cluster`) no step writes these weights: the Argo Rollouts
Gateway API plugin does, on the `<model>` route with its `<model>-stable` and `<model>-canary` backendRefs, and the
steps' Role grants only get and create on httproutes. There this router only reads the live split (`weights()`);
`set_weights` is for a route no controller owns, under an account allowed to patch it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol

from steps.core.kube import api_error_fix, api_status, describe_api_error
from steps.rollout.routing.base import RoutingError, validate_weights

__all__ = ["GROUP", "PLURAL", "VERSION", "CustomObjectsApi", "GatewayRouter"]

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"
_CONFLICT = 409
_ATTEMPTS = 3


class CustomObjectsApi(Protocol):
    """The two calls of `kubernetes.client.CustomObjectsApi` the router uses."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        """Return the object as a dict."""
        ...

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        """Apply a JSON merge patch to the object and return the result."""
        ...


class GatewayRouter:
    """Splits traffic by patching `spec.rules[rule].backendRefs[*].weight` of one HTTPRoute; implements `Router`.

    Backends are named by their backendRef `name` (the Service of each model version).
    """

    def __init__(self, api: CustomObjectsApi, *, namespace: str, name: str, rule: int = 0) -> None:
        """Bind the router to one HTTPRoute rule.

        Args:
            api: a `kubernetes.client.CustomObjectsApi` (or anything with its two methods).
            namespace: namespace of the HTTPRoute.
            name: name of the HTTPRoute.
            rule: index of the rule in `spec.rules` whose backendRefs carry the split.
        """
        self._api = api
        self._namespace = namespace
        self._name = name
        self._rule = rule

    @classmethod
    def from_cluster(cls, *, namespace: str, name: str, rule: int = 0) -> GatewayRouter:
        """Build a router with the in-cluster service account, or the local kubeconfig outside a cluster.

        Raises:
            RoutingError: when the `kubernetes` package is missing or no configuration can be loaded.
        """
        from steps.core.kube import kube_client

        client = kube_client(RoutingError, f"HTTPRoute {namespace}/{name}")
        return cls(client.CustomObjectsApi(), namespace=namespace, name=name, rule=rule)

    @property
    def route(self) -> str:
        """The HTTPRoute as namespace/name."""
        return f"{self._namespace}/{self._name}"

    def weights(self) -> dict[str, int]:
        """Return the live split: backendRef name -> weight (Gateway API's default weight is 1)."""
        refs = self._backend_refs(self._get())
        return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Patch the HTTPRoute's backendRefs weights (see `Router.set_weights`).

        Raises:
            RoutingError: on bad weights (nothing patched), or naming the route when the API refuses.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            route = self._get()
            target = validate_weights([ref["name"] for ref in self._backend_refs(route)], weights)
            try:
                self._api.patch_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, PLURAL, self._name, self._patch(route, target)
                )
                return
            except Exception as e:  # the client raises kubernetes.client.ApiException, urllib3 errors, ...
                if api_status(e) == _CONFLICT and attempt < _ATTEMPTS:
                    continue
                raise RoutingError(
                    f"HTTPRoute {self.route}: patching backendRefs weights failed ({describe_api_error(e)}): {_fix(e)}"
                ) from e

    def _get(self) -> dict[str, Any]:
        try:
            route = self._api.get_namespaced_custom_object(GROUP, VERSION, self._namespace, PLURAL, self._name)
        except Exception as e:  # see set_weights
            raise RoutingError(f"HTTPRoute {self.route}: reading it failed ({describe_api_error(e)}): {_fix(e)}") from e
        if not isinstance(route, dict):
            raise RoutingError(f"HTTPRoute {self.route}: the API returned {type(route).__name__}, not an object")
        return route

    def _backend_refs(self, route: dict[str, Any]) -> list[dict[str, Any]]:
        rules = route.get("spec", {}).get("rules") or []
        if not 0 <= self._rule < len(rules):
            raise RoutingError(
                f"HTTPRoute {self.route} has no rule {self._rule} (it has {len(rules)}): add the rule or fix `rule`"
            )
        refs: list[dict[str, Any]] = rules[self._rule].get("backendRefs") or []
        names = [ref.get("name") for ref in refs]
        if not refs or None in names or len(set(names)) != len(names):
            raise RoutingError(
                f"HTTPRoute {self.route} rule {self._rule} backendRefs {names}: give each model version one "
                "backendRef with a distinct name"
            )
        return refs

    def _patch(self, route: dict[str, Any], target: Mapping[str, int]) -> dict[str, Any]:
        # A merge patch replaces lists whole: send every rule back, changing only the weights of our rule.
        rules = copy.deepcopy(route["spec"]["rules"])
        for ref in rules[self._rule]["backendRefs"]:
            ref["weight"] = target[ref["name"]]
        metadata = {"resourceVersion": rv} if (rv := route.get("metadata", {}).get("resourceVersion")) else {}
        return {"metadata": metadata, "spec": {"rules": rules}}


def _fix(error: Exception) -> str:
    return api_error_fix(
        error,
        {
            403: "grant the step's ServiceAccount get and patch on httproutes.gateway.networking.k8s.io",
            404: "create the HTTPRoute (infrastructure/) or fix its namespace/name",
            409: "another writer keeps changing the route: retry the step",
            422: "the API server rejected the weights: check the HTTPRoute and the Gateway API version (v1)",
        },
    )
