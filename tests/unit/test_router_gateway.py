"""GatewayRouter against a fake CustomObjectsApi, plus the weight rules every router shares.

A fake stands in for the Kubernetes API server because none runs on this machine: it keeps one HTTPRoute as a
dict, applies JSON merge patches the way the API server does (objects merge, lists are replaced whole, a stale
metadata.resourceVersion is a 409 Conflict), and records every patch it was sent.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from steps.rollout.routing import GatewayRouter, Router, RoutingError, canary_split, validate_weights
from steps.rollout.routing.gateway import GROUP, PLURAL, VERSION

NAMESPACE, NAME = "serving", "chat"


class ApiError(Exception):
    """Shaped like kubernetes.client.ApiException: status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) Reason: {reason}")
        self.status = status
        self.reason = reason


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeCustomObjectsApi:
    """One HTTPRoute behind the two CustomObjectsApi calls GatewayRouter makes."""

    def __init__(self, route: dict[str, Any]) -> None:
        self.route = route
        self.patches: list[dict[str, Any]] = []
        self.fail_patch: list[Exception] = []  # raised, in order, by the next patches
        self.fail_get: Exception | None = None

    def _check(self, group: str, version: str, namespace: str, plural: str, name: str) -> None:
        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        if (namespace, name) != (NAMESPACE, NAME):
            raise ApiError(404, "Not Found")

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        self._check(group, version, namespace, plural, name)
        if self.fail_get is not None:
            raise self.fail_get
        return copy.deepcopy(self.route)

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any
    ) -> Any:
        self._check(group, version, namespace, plural, name)
        self.patches.append(copy.deepcopy(body))
        if self.fail_patch:
            raise self.fail_patch.pop(0)
        sent = body.get("metadata", {}).get("resourceVersion")
        if sent is not None and sent != self.route["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict")
        _merge(self.route, body)
        self.route["metadata"]["resourceVersion"] = str(int(self.route["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.route)


def _route() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": "7"},
        "spec": {
            "parentRefs": [{"name": "llm-gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [
                        {"name": "stable", "port": 8000, "weight": 100},
                        {"name": "canary", "port": 8000, "weight": 0},
                    ],
                },
                {"backendRefs": [{"name": "docs", "port": 80}]},
            ],
        },
    }


@pytest.fixture
def api() -> FakeCustomObjectsApi:
    return FakeCustomObjectsApi(_route())


@pytest.fixture
def router(api: FakeCustomObjectsApi) -> GatewayRouter:
    return GatewayRouter(api, namespace=NAMESPACE, name=NAME)


def _weights_in(api: FakeCustomObjectsApi) -> dict[str, int]:
    return {ref["name"]: ref["weight"] for ref in api.route["spec"]["rules"][0]["backendRefs"]}


def test_router_implements_the_interface(router: GatewayRouter) -> None:
    assert isinstance(router, Router)


def test_weights_are_patched_into_backend_refs(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    # WHEN a 75/25 split is set  THEN one patch writes both weights and keeps everything else of the route
    router.set_weights(canary_split(25))

    assert _weights_in(api) == {"stable": 75, "canary": 25}
    assert router.weights() == {"stable": 75, "canary": 25}
    assert len(api.patches) == 1
    assert api.patches[0]["metadata"] == {"resourceVersion": "7"}
    assert api.route["spec"]["rules"][0]["matches"] == _route()["spec"]["rules"][0]["matches"]
    assert api.route["spec"]["rules"][1] == _route()["spec"]["rules"][1]
    assert api.route["spec"]["parentRefs"] == [{"name": "llm-gateway"}]
    assert [ref["port"] for ref in api.route["spec"]["rules"][0]["backendRefs"]] == [8000, 8000]


def test_left_out_backends_are_drained(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    router.set_weights(canary_split(40))
    router.set_weights({"stable": 100})
    assert _weights_in(api) == {"stable": 100, "canary": 0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"stable": 80, "canary": 30}, "sum to 110"),
        ({"stable": 50, "ghost": 50}, "unknown backend 'ghost'"),
        ({"stable": 110, "canary": -10}, "from 0 to 100"),
        ({"stable": True, "canary": 99}, "integer"),
    ],
)
def test_bad_weights_patch_nothing(
    api: FakeCustomObjectsApi, router: GatewayRouter, weights: dict[str, int], message: str
) -> None:
    with pytest.raises(RoutingError, match=message):
        router.set_weights(weights)
    assert api.patches == []
    assert api.route == _route()


def test_api_error_becomes_routing_error_naming_the_route(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    api.fail_patch = [ApiError(403, "Forbidden")]
    with pytest.raises(RoutingError, match=r"HTTPRoute serving/chat: .*403 Forbidden.*grant .* patch") as caught:
        router.set_weights(canary_split(10))
    assert isinstance(caught.value.__cause__, ApiError)
    assert "\n" not in str(caught.value)
    assert _weights_in(api) == {"stable": 100, "canary": 0}


def test_missing_route_is_named_with_the_fix(api: FakeCustomObjectsApi) -> None:
    router = GatewayRouter(api, namespace=NAMESPACE, name="nope")
    with pytest.raises(RoutingError, match=r"HTTPRoute serving/nope: reading it failed \(404 Not Found\): create"):
        router.weights()


def test_unreachable_api_server_names_the_route(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    api.fail_get = ConnectionRefusedError("connection refused")
    with pytest.raises(RoutingError, match=r"HTTPRoute serving/chat: .*ConnectionRefusedError"):
        router.set_weights(canary_split(10))
    assert api.patches == []


def test_conflict_is_retried_on_a_fresh_read(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    # GIVEN another writer changed the route after the router read it (the first patch answers 409)
    api.fail_patch = [ApiError(409, "Conflict")]
    router.set_weights(canary_split(30))
    assert _weights_in(api) == {"stable": 70, "canary": 30}
    assert len(api.patches) == 2


def test_persistent_conflict_gives_up(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    api.fail_patch = [ApiError(409, "Conflict")] * 3
    with pytest.raises(RoutingError, match="409 Conflict"):
        router.set_weights(canary_split(30))
    assert len(api.patches) == 3


def test_unset_weight_reads_as_gateway_default(api: FakeCustomObjectsApi) -> None:
    assert GatewayRouter(api, namespace=NAMESPACE, name=NAME, rule=1).weights() == {"docs": 1}


@pytest.mark.parametrize("rule", [2, -1])
def test_missing_rule_is_reported(api: FakeCustomObjectsApi, rule: int) -> None:
    with pytest.raises(RoutingError, match=f"has no rule {rule}"):
        GatewayRouter(api, namespace=NAMESPACE, name=NAME, rule=rule).set_weights({"stable": 100})
    assert api.patches == []


def test_duplicate_backend_names_are_refused(api: FakeCustomObjectsApi, router: GatewayRouter) -> None:
    api.route["spec"]["rules"][0]["backendRefs"].append({"name": "stable", "port": 9000})
    with pytest.raises(RoutingError, match="distinct name"):
        router.set_weights({"stable": 100})
    assert api.patches == []


# The weight rules both routers share (steps/rollout/routing/base.py).


def test_validate_weights_completes_the_split_in_backend_order() -> None:
    assert validate_weights(["a", "b", "c"], {"c": 30, "a": 70}) == {"a": 70, "b": 0, "c": 30}


@pytest.mark.parametrize("percent", [1, 25, 100])
def test_canary_split(percent: int) -> None:
    assert canary_split(percent) == {"stable": 100 - percent, "canary": percent}
    assert canary_split(percent, stable="v1", canary="v2") == {"v1": 100 - percent, "v2": percent}


@pytest.mark.parametrize("percent", [0, -5, 101, 12.5, True])
def test_canary_split_refuses_a_canary_without_traffic_or_out_of_range(percent: int) -> None:
    with pytest.raises(RoutingError, match="canary_percent .* use an integer from 1 to 100"):
        canary_split(percent)


def test_canary_split_needs_two_backends() -> None:
    with pytest.raises(RoutingError, match="both stable and canary"):
        canary_split(10, stable="v1", canary="v1")
