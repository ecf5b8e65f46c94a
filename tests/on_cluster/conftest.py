"""What the `on_cluster` suite needs: a cluster with its operators, asked for explicitly (`pytest -m on_cluster`).

`make test` runs plain `pytest`: these tests are collected (the module imports nothing heavy) and skipped, even
where a KUBECONFIG happens to point at some cluster, unless the marker expression names `on_cluster`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("LLMRELEASE_NAMESPACE", "llmrelease")
ROLLOUTS_NAMESPACE = os.environ.get("ARGO_ROLLOUTS_NAMESPACE", "argo-rollouts")
PLUGIN = "argoproj-labs/gatewayAPI"
REQUIRED_CRDS = {
    "workflows.argoproj.io": "Argo Workflows",
    "workflowtemplates.argoproj.io": "Argo Workflows",
    "rollouts.argoproj.io": "Argo Rollouts",
    "analysistemplates.argoproj.io": "Argo Rollouts",
    "analysisruns.argoproj.io": "Argo Rollouts",
    "httproutes.gateway.networking.k8s.io": "the Gateway API",
    "gateways.gateway.networking.k8s.io": "the Gateway API",
    "rayclusters.ray.io": "KubeRay",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the on_cluster tests unless they were asked for (`-m on_cluster`): they drive a real cluster."""
    if "on_cluster" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="needs a real cluster (docs/cluster-kind.md): run it with `pytest -m on_cluster`")
    for item in items:
        if "on_cluster" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class Cluster:
    """The clients and settings the suite drives the cluster with."""

    custom: Any  # kubernetes.client.CustomObjectsApi
    core: Any  # kubernetes.client.CoreV1Api
    environment: str  # the policy environment released into (its plane must be `kubernetes`)
    releases_repo: str  # clone URL of the releases repository, as the step pods reach it
    releases_commit: str
    timeout_s: float


def _missing_settings() -> list[str]:
    missing = []
    if not os.environ.get("LLMRELEASE_CLUSTER_RELEASES_REPO"):
        missing.append("LLMRELEASE_CLUSTER_RELEASES_REPO (the releases repository's clone URL, reachable from pods)")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        missing.append("MLFLOW_TRACKING_URI (e.g. `kubectl -n llmrelease port-forward svc/mlflow 5000`)")
    return missing


def _missing_plane(environment: str) -> list[str]:
    from steps.release.policy import load_policy

    plane = load_policy().environment(environment).plane
    if plane != "kubernetes":
        return [f"plane: kubernetes for environment {environment} in policy/platform-policy.yaml (it is {plane})"]
    return []


def _missing_in_cluster(client: Any) -> list[str]:
    """The CRDs, the Gateway API plugin registration and the MLflow Service that are not there."""
    try:
        crds = {c.metadata.name for c in client.ApiextensionsV1Api().list_custom_resource_definition().items}
    except Exception as e:  # unreachable or refused: say which, on one line
        return [f"a reachable API server that lets this user list CRDs ({' '.join(str(e).split())[:160]})"]
    missing = [f"CRD {name} ({what})" for name, what in REQUIRED_CRDS.items() if name not in crds]
    core = client.CoreV1Api()
    try:
        config_map = core.read_namespaced_config_map("argo-rollouts-config", ROLLOUTS_NAMESPACE)
        plugins = (config_map.data or {}).get("trafficRouterPlugins", "")
    except client.ApiException:
        plugins = ""
    if PLUGIN not in plugins:
        missing.append(f"the {PLUGIN} plugin in ConfigMap {ROLLOUTS_NAMESPACE}/argo-rollouts-config")
    try:
        core.read_namespaced_service("mlflow", NAMESPACE)
    except client.ApiException:
        missing.append(f"Service {NAMESPACE}/mlflow (infrastructure/base/mlflow.yaml)")
    return missing


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """The cluster `KUBECONFIG` points at, or a skip naming, on one line, everything the suite misses there."""
    try:
        from kubernetes import client, config
    except ImportError:
        pytest.skip("kubernetes client not installed: pip install -e '.[steps]'")
    try:
        config.load_kube_config()
    except (config.ConfigException, OSError) as e:
        pytest.skip(f"KUBECONFIG {os.environ.get('KUBECONFIG')} does not load: {e}")
    environment = os.environ.get("LLMRELEASE_CLUSTER_ENV", "dev")
    missing = _missing_settings() + _missing_plane(environment) + _missing_in_cluster(client)
    if missing:
        pytest.skip("cluster not ready for the on_cluster suite, missing: " + "; ".join(missing))
    return Cluster(
        custom=client.CustomObjectsApi(),
        core=client.CoreV1Api(),
        environment=environment,
        releases_repo=os.environ["LLMRELEASE_CLUSTER_RELEASES_REPO"],
        releases_commit=os.environ.get("LLMRELEASE_CLUSTER_RELEASES_COMMIT", ""),
        timeout_s=float(os.environ.get("LLMRELEASE_CLUSTER_TIMEOUT_S", "3600")),
    )
