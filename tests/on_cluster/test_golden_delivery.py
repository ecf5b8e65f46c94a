"""Golden delivery and `llmrelease rollout undo` on a real cluster: Argo Workflows, Argo Rollouts, Gateway API, MLflow.

NOT RUN: this module cannot run on the machine the project is developed on (it has no Kubernetes), and it has never
been run; the cluster plane is verified there only against recorded API behaviour and CRD schemas
(tests/unit/test_rollout_cluster.py, test_rollout_render.py). Stand a cluster up with docs/cluster-kind.md, then:

    KUBECONFIG=~/.kube/config MLFLOW_TRACKING_URI=http://localhost:5000 \
    LLMRELEASE_CLUSTER_RELEASES_REPO=<clone URL the pods reach> pytest -m on_cluster tests/on_cluster

What it does, through the Kubernetes API only (no `argo` CLI): applies argo/golden-delivery.workflowtemplate.yaml
(the rendered WorkflowTemplate), submits it as a Workflow with `workflowTemplateRef` (first the seed release when the
model has no champion yet, then the candidate release), waits for each, and asserts:

* the Workflow Succeeded;
* the model's Rollout is Healthy (the controller saw the latest spec, stable hash = current hash) and serves the
  version the run registered; its HTTPRoute sends 100% to `<model>-stable`;
* MLflow's `champion` alias is on that version and `previous` on the one before;
* an evidence bundle: the exit handler's `evidence-digest` output, equal to the digest the version is tagged with,
  and the evidence run it names exists;

then runs `llmrelease rollout undo MODEL --env ENV` (the command an operator types) and asserts the Rollout is back on
the previous version, Healthy, with all traffic on stable, within `keep_previous_hot_s` a traffic switch (seconds,
not a cold vLLM start), and the `champion` alias back on it.

Settings (environment): KUBECONFIG (required), MLFLOW_TRACKING_URI (required: MLflow as this machine reaches it),
LLMRELEASE_CLUSTER_RELEASES_REPO (required), LLMRELEASE_CLUSTER_RELEASES_COMMIT, LLMRELEASE_CLUSTER_ENV (dev; its
policy `plane` must be `kubernetes`), LLMRELEASE_CLUSTER_MODEL (demo-qa), LLMRELEASE_CLUSTER_SEED
(releases/demo-champion.yaml), LLMRELEASE_CLUSTER_RELEASE (releases/demo.yaml), LLMRELEASE_CLUSTER_TIMEOUT_S (3600),
LLMRELEASE_NAMESPACE (llmrelease).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.on_cluster.conftest import NAMESPACE, REPO, Cluster

if not os.environ.get("KUBECONFIG"):
    pytest.skip("on_cluster: KUBECONFIG is not set (no cluster; see docs/cluster-kind.md)", allow_module_level=True)

pytestmark = pytest.mark.on_cluster

GROUP, VERSION = "argoproj.io", "v1alpha1"
MODEL = os.environ.get("LLMRELEASE_CLUSTER_MODEL", "demo-qa")
SEED = os.environ.get("LLMRELEASE_CLUSTER_SEED", "releases/demo-champion.yaml")
RELEASE = os.environ.get("LLMRELEASE_CLUSTER_RELEASE", "releases/demo.yaml")
UNDO_SWITCH_S = 60.0  # within the hot window undo is a traffic switch; a cold vLLM start takes minutes


@dataclass(frozen=True)
class Delivery:
    """The candidate's golden delivery: its Workflow as it ended, and the champions before and after."""

    workflow: dict[str, Any]
    version: str  # what the run registered
    before: str  # the champion before the run (the seed's version when the seed ran first)


def _apply_template(cluster: Cluster, path: Path) -> None:
    """Create the WorkflowTemplate from `path`, or replace the one there (argo/ is the rendered truth)."""
    from kubernetes.client import ApiException

    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    name = body["metadata"]["name"]
    try:
        live = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workflowtemplates", name)
    except ApiException as e:
        if e.status != 404:
            raise
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workflowtemplates", body)
        return
    body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    cluster.custom.replace_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workflowtemplates", name, body)


def _deliver(cluster: Cluster, release: str) -> dict[str, Any]:
    """Submit golden-delivery of `release` as a Workflow (workflowTemplateRef); return it once it has ended."""
    parameters = {
        "release": release,
        "git-repo": cluster.releases_repo,
        "git-commit": cluster.releases_commit,
        "environment": cluster.environment,
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workflow",
        "metadata": {"generateName": "golden-delivery-on-cluster-", "namespace": NAMESPACE},
        "spec": {
            "workflowTemplateRef": {"name": "golden-delivery"},
            "arguments": {"parameters": [{"name": k, "value": v} for k, v in parameters.items()]},
        },
    }
    created = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workflows", body)
    name = created["metadata"]["name"]
    deadline = time.monotonic() + cluster.timeout_s
    while time.monotonic() < deadline:
        workflow = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workflows", name)
        status = workflow.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed", "Error"):
            return dict(workflow)
        time.sleep(10)
    pytest.fail(f"Workflow {NAMESPACE}/{name} ({release}) still running after {cluster.timeout_s:g}s", pytrace=False)


def _output(workflow: dict[str, Any], template: str, parameter: str) -> str | None:
    """The output parameter of the (last) node that ran `template`, or None."""
    found = None
    for node in (workflow.get("status") or {}).get("nodes", {}).values():
        if node.get("templateName") == template:
            for p in (node.get("outputs") or {}).get("parameters") or []:
                if p.get("name") == parameter:
                    found = p.get("value")
    return found


def _failed_nodes(workflow: dict[str, Any]) -> str:
    nodes = (workflow.get("status") or {}).get("nodes", {}).values()
    failed = [n for n in nodes if n.get("phase") in ("Failed", "Error")]
    return "; ".join(f"{n.get('displayName')}: {n.get('message')}" for n in failed)


def _registry() -> Any:
    from registry.facade import ModelRegistry

    return ModelRegistry.from_env()


def _rollout(cluster: Cluster) -> Any:
    from steps.rollout.serving.cluster import rollout_status

    live = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "rollouts", MODEL)
    return rollout_status(live)


def _route_weights(cluster: Cluster) -> dict[str, int]:
    route = cluster.custom.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", NAMESPACE, "httproutes", MODEL
    )
    refs = [ref for rule in route["spec"].get("rules", []) for ref in rule.get("backendRefs", [])]
    return {ref["name"]: int(ref.get("weight", 1)) for ref in refs}


@pytest.fixture(scope="module")
def delivery(cluster: Cluster) -> Delivery:
    """golden-delivery of the seed release (only when the model has no champion), then of the candidate."""
    _apply_template(cluster, REPO / "argo" / "golden-delivery.workflowtemplate.yaml")
    from registry.tags import CHAMPION

    if _registry().get_alias(MODEL, CHAMPION) is None:
        seed = _deliver(cluster, SEED)
        assert seed["status"]["phase"] == "Succeeded", f"seed release {SEED}: {_failed_nodes(seed)}"
    before = _registry().get_alias(MODEL, CHAMPION)
    assert before is not None, f"{MODEL} has no champion after the seed release {SEED}"
    workflow = _deliver(cluster, RELEASE)
    version = _output(workflow, "register", "version") or ""
    return Delivery(workflow=workflow, version=version, before=before)


def test_golden_delivery_promotes_the_candidate_through_argo_rollouts(cluster: Cluster, delivery: Delivery) -> None:
    from mlflow import MlflowClient

    from registry.tags import CHAMPION, EVIDENCE_DIGEST_TAG, EVIDENCE_TAG, PREVIOUS

    workflow = delivery.workflow
    assert workflow["status"]["phase"] == "Succeeded", _failed_nodes(workflow)
    assert delivery.version and delivery.version != delivery.before, (delivery.version, delivery.before)

    status = _rollout(cluster)
    assert status.settled == "Healthy", status
    assert status.version == delivery.version, status
    weights = _route_weights(cluster)
    assert weights.get(f"{MODEL}-stable") == 100 and weights.get(f"{MODEL}-canary", 0) == 0, weights

    registry = _registry()
    assert registry.get_alias(MODEL, CHAMPION) == delivery.version
    assert registry.get_alias(MODEL, PREVIOUS) == delivery.before

    digest = _output(workflow, "finalize", "evidence-digest")
    assert digest, "the exit handler wrote no evidence bundle"
    client = MlflowClient()
    tags = client.get_model_version(MODEL, delivery.version).tags
    evidence = json.loads(tags[EVIDENCE_TAG])
    assert evidence["digest"] == digest and evidence["workflow_uid"] == workflow["metadata"]["uid"], evidence
    run = client.get_run(evidence["run_id"])
    assert run.data.tags[EVIDENCE_DIGEST_TAG] == digest
    assert client.list_artifacts(run.info.run_id, "evidence"), "the evidence run holds no bundle"


def test_rollout_undo_switches_back_to_the_previous_version(cluster: Cluster, delivery: Delivery) -> None:
    from registry.tags import CHAMPION

    assert delivery.workflow["status"]["phase"] == "Succeeded", "nothing to undo: the delivery did not succeed"
    command = [str(Path(sys.executable).parent / "llmrelease"), "rollout", "undo", MODEL, "--env", cluster.environment]
    command += ["--namespace", NAMESPACE, "--actor", "on-cluster-test", "--reason", "on_cluster suite"]
    started = time.monotonic()
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    status = _rollout(cluster)
    while time.monotonic() - started < UNDO_SWITCH_S and not (
        status.settled == "Healthy" and status.version == delivery.before
    ):
        time.sleep(0.2)
        status = _rollout(cluster)
    switched_s = time.monotonic() - started
    assert status.settled == "Healthy" and status.version == delivery.before, (status, f"{switched_s:.1f}s")
    weights = _route_weights(cluster)
    assert weights.get(f"{MODEL}-stable") == 100 and weights.get(f"{MODEL}-canary", 0) == 0, weights
    assert _registry().get_alias(MODEL, CHAMPION) == delivery.before, "undo moved traffic but not the champion alias"
    print(f"rollout undo: Rollout Healthy on version {delivery.before} {switched_s:.2f}s after the command started")
