"""`steps.rollout.serving.kubernetes`: the vLLM Deployment + Service of a model version, rendered and applied.

`apply` runs against a fake of the two Kubernetes client APIs, because no Kubernetes API server can run on this
machine: the fake keeps objects in dicts, answers reads of missing objects with a 404 shaped like
`kubernetes.client.ApiException`, merges patches into what it holds, and records every call.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from steps.rollout.serving import ServingError
from steps.rollout.serving.kubernetes import AppliedObject, apply, default_template, object_name, render_vllm

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "vllm/vllm-openai:v0.32.0"
URI = "s3://llmrelease-dev-artifacts/models/demo-qa/3"


def _render(**overrides: Any) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = {"model_name": "demo-qa", "version": "3", "model_uri": URI, "image": IMAGE, **overrides}
    docs = render_vllm(args.pop("model_name"), args.pop("version"), args.pop("model_uri"), **args)
    return {doc["kind"]: doc for doc in docs}


def _vllm(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")


# --- render -------------------------------------------------------------------------------------------------------
def test_render_is_schema_valid() -> None:
    """GIVEN a rendered model version
    WHEN both objects are validated against Kubernetes' strict schemas (kubernetes-validate)
    THEN they are valid."""
    if os.environ.get("CI") == "true":
        import kubernetes_validate
    else:
        kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for doc in _render(gpus=2, max_model_len=4096).values():
        kubernetes_validate.validate(doc, "1.33", strict=True)


def test_render_names_and_labels_every_object_by_model_and_version() -> None:
    """GIVEN model demo-qa version 3
    WHEN it is rendered
    THEN the Deployment and Service are demo-qa-v3 in llmrelease, labelled with model and version, and the Service
    selects exactly that version's pods."""
    docs = _render()
    assert sorted(docs) == ["Deployment", "Service"]
    for doc in docs.values():
        assert doc["metadata"]["name"] == "demo-qa-v3" and doc["metadata"]["namespace"] == "llmrelease"
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "vllm"
        assert (labels["llmrelease.io/model"], labels["llmrelease.io/version"]) == ("demo-qa", "3")
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert docs["Service"]["spec"]["selector"]["app.kubernetes.io/instance"] == "demo-qa-v3"
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"] == docs["Service"]["spec"]["selector"]


def test_every_version_answers_to_the_model_name() -> None:
    """GIVEN two versions of one model, and one with a served-name override
    WHEN they are rendered
    THEN vLLM serves both versions as the model's name, and the override when given."""
    for version in ("3", "4"):
        args = _vllm(_render(version=version)["Deployment"])["args"]
        assert args[args.index("--served-model-name") + 1] == "demo-qa"
    args = _vllm(_render(served_model_name="qa")["Deployment"])["args"]
    assert args[args.index("--served-model-name") + 1] == "qa"


def test_readiness_needs_a_real_completion_and_startup_waits_on_health() -> None:
    """GIVEN a rendered Deployment
    WHEN its probes are read
    THEN startup waits on /health, and readiness posts a one-token chat completion to the served model name."""
    container = _vllm(_render()["Deployment"])
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    script = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "/v1/chat/completions" in script and '"max_tokens": 1' in script and "SERVED_MODEL_NAME" in script
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SERVED_MODEL_NAME"] == "demo-qa" and env["HF_HUB_OFFLINE"] == "1"


def test_weights_come_from_s3_through_an_init_container() -> None:
    """GIVEN a rendered Deployment
    WHEN its init container and volumes are read
    THEN the weights are copied from the version's S3 URI into a volume vLLM reads, with the steps image."""
    from steps.core.images import STEPS_IMAGE

    pod = _render()["Deployment"]["spec"]["template"]["spec"]
    fetch = pod["initContainers"][0]
    assert fetch["image"] == STEPS_IMAGE
    assert {"name": "MODEL_URI", "value": URI} in fetch["env"]
    assert "boto3" in " ".join(fetch["command"])
    vllm = _vllm(_render()["Deployment"])
    assert vllm["command"] == ["vllm", "serve", "/models/weights"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in vllm["volumeMounts"]


def test_gpus_context_length_and_security() -> None:
    """GIVEN 2 GPUs and a context cap
    WHEN rendered
    THEN the GPUs are requested and limited, vLLM shards over them, the cap is passed, and the pod is non-root with
    read-only root filesystems and no API token."""
    deployment = _render(gpus=2, max_model_len=4096)["Deployment"]
    container = _vllm(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"
    assert container["args"][-2:] == ["--max-model-len", "4096"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--max-model-len" not in _vllm(_render()["Deployment"])["args"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_name": "Demo_QA"}, "not a valid Service name"),
        ({"model_uri": "models:/demo-qa/3"}, "not s3://bucket/prefix"),
        ({"image": "vllm/vllm-openai"}, "no tag or digest"),
        ({"gpus": 0}, "at least 1 GPU"),
        ({"max_model_len": 0}, "positive token count"),
    ],
)
def test_render_refuses_bad_inputs(overrides: dict[str, Any], message: str) -> None:
    """GIVEN a bad model name, URI, image, GPU count or context length
    WHEN rendering
    THEN a ServingError says what is wrong and how to fix it."""
    with pytest.raises(ServingError, match=message):
        _render(**overrides)


def test_template_is_the_operators_file_and_placeholders_must_be_known(tmp_path: Path) -> None:
    """GIVEN the default template, and a copy with an unknown placeholder
    WHEN rendering from each
    THEN the default is infrastructure/serving/vllm.yaml, and the unknown placeholder is named in the error."""
    assert default_template().relative_to(ROOT) == Path("infrastructure/serving/vllm.yaml")
    broken = tmp_path / "vllm.yaml"
    broken.write_text(default_template().read_text().replace("${GPUS}", "${GPU_COUNT}", 1), encoding="utf-8")
    with pytest.raises(ServingError, match="GPU_COUNT"):
        _render(template=broken)


def test_object_name_is_model_dash_v_version() -> None:
    """GIVEN a model and version
    WHEN named
    THEN the name is <model>-v<version> (the shipped HTTPRoute routes to the Rollout's stable/canary Services
    instead: tests/unit/test_rollout_render.py)."""
    assert object_name("demo-qa", "12") == "demo-qa-v12"


# --- apply against a fake API -------------------------------------------------------------------------------------
class ApiError(Exception):
    """Shaped like kubernetes.client.ApiException: status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) Reason: {reason}")
        self.status = status
        self.reason = reason


@dataclass
class FakeKind:
    """One kind's read/create/patch, over a dict of objects, recording calls; `refuse` makes writes fail."""

    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    refuse: int | None = None

    def read(self, name: str, namespace: str) -> dict[str, Any]:
        self.calls.append(("read", name))
        if (namespace, name) not in self.objects:
            raise ApiError(404, "Not Found")
        return copy.deepcopy(self.objects[(namespace, name)])

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body["metadata"]["name"]))
        if self.refuse:
            raise ApiError(self.refuse, "Forbidden")
        self.objects[(namespace, body["metadata"]["name"])] = copy.deepcopy(body)
        return body

    def patch(self, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", name))
        if self.refuse:
            raise ApiError(self.refuse, "Forbidden")
        self.objects[(namespace, name)].update(copy.deepcopy(body))
        return body


class FakeApps:
    def __init__(self, kind: FakeKind) -> None:
        self.read_namespaced_deployment = kind.read
        self.create_namespaced_deployment = kind.create
        self.patch_namespaced_deployment = kind.patch


class FakeCore:
    def __init__(self, kind: FakeKind) -> None:
        self.read_namespaced_service = kind.read
        self.create_namespaced_service = kind.create
        self.patch_namespaced_service = kind.patch


class FakeCluster:
    """Stands in for `ClusterApi`: `apps` and `core` over two FakeKinds."""

    def __init__(self) -> None:
        self.deployments, self.services = FakeKind(), FakeKind()
        self.apps, self.core = FakeApps(self.deployments), FakeCore(self.services)


def test_apply_creates_then_patches() -> None:
    """GIVEN an empty namespace
    WHEN a version is applied twice
    THEN the first apply creates the Deployment and Service, the second patches them (idempotent)."""
    cluster = FakeCluster()
    manifests = render_vllm("demo-qa", "3", URI, image=IMAGE)
    first = apply(manifests, cluster)
    assert first == [
        AppliedObject("Deployment", "llmrelease", "demo-qa-v3", "created"),
        AppliedObject("Service", "llmrelease", "demo-qa-v3", "created"),
    ]
    assert cluster.deployments.objects[("llmrelease", "demo-qa-v3")] == manifests[0]
    second = apply(manifests, cluster)
    assert [o.action for o in second] == ["patched", "patched"]
    assert cluster.deployments.calls == [("read", "demo-qa-v3"), ("create", "demo-qa-v3"),
                                         ("read", "demo-qa-v3"), ("patch", "demo-qa-v3")]  # fmt: skip


def test_apply_names_the_object_and_the_fix_when_refused() -> None:
    """GIVEN an API that forbids writes (missing RBAC)
    WHEN a version is applied
    THEN a ServingError names the object and the permission to grant."""
    cluster = FakeCluster()
    cluster.deployments.refuse = 403
    with pytest.raises(ServingError, match=r"Deployment llmrelease/demo-qa-v3: .*403.*grant .* deployments.apps"):
        apply(render_vllm("demo-qa", "3", URI, image=IMAGE), cluster)


def test_apply_refuses_other_kinds_before_any_call() -> None:
    """GIVEN a manifest list with a ConfigMap
    WHEN applied
    THEN nothing is called and the error names the kind."""
    cluster = FakeCluster()
    manifests = [*render_vllm("demo-qa", "3", URI, image=IMAGE), {"kind": "ConfigMap", "metadata": {"name": "x"}}]
    with pytest.raises(ServingError, match="ConfigMap"):
        apply(manifests, cluster)
    assert cluster.deployments.calls == [] and cluster.services.calls == []
