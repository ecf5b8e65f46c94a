"""Offline validation of everything under infrastructure/ (and argo/) against the Kubernetes and CRD schemas.

No cluster runs here, so the checks are what `kubectl apply --dry-run=server --validate=strict` would catch that
can be known offline:

- every Kubernetes object of infrastructure/base, of each overlay (built here: resources, images and JSON 6902
  patches, the only Kustomize features the overlays may use), of the rendered vLLM template and of argo/ validates
  against its schema with unknown fields refused: core kinds against kubernetes-validate's bundled strict schemas,
  CRDs against infrastructure/schemas/ (sources in infrastructure/schemas/SOURCES.md), Argo Workflows kinds through
  `llmrelease lint` (Hera's models, unknown fields refused);
- least privilege: the steps' Role grants exactly what the steps use; pods run as non-root with read-only root
  filesystems; accounts that never call the API mount no token;
- Helm charts pinned to exact versions with their values files; Terraform parses (python-hcl2) and has the CPU and
  GPU spot node groups; alerts read only metrics the platform documents (steps/evidence/metrics.py).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infrastructure"
SCHEMAS = INFRA / "schemas"
K8S_VERSION = "1.33.0"  # the EKS version of infrastructure/terraform/eks (variables.tf)
ARGO_WORKFLOW_KINDS = {"Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"}
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}


def _require(module: str, package: str) -> Any:
    """Import an optional test dependency: skip here without it, fail loudly in CI (CI=true)."""
    if os.environ.get("CI") == "true":
        try:
            return __import__(module)
        except ImportError as e:
            pytest.fail(f"{module} is missing in CI: pip install '{package}' (add it to the dev extra)")
            raise AssertionError from e
    return pytest.importorskip(module, reason=f"pip install '{package}' to run this check")


# --- schemas ------------------------------------------------------------------------------------------------------
@functools.cache
def _k8s_dir() -> Path:
    _require("kubernetes_validate", "kubernetes-validate==1.37.0")
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    return Path(str(root))


@functools.cache
def _registry() -> Registry:
    definitions = json.loads((_k8s_dir() / "_definitions.json").read_text(encoding="utf-8"))
    return Resource.from_contents(definitions) @ Registry()


@functools.cache
def _schema_for(api_version: str, kind: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    vendored = SCHEMAS / (group or "core") / f"{kind.lower()}_{version}.json"
    if vendored.is_file():
        return json.loads(vendored.read_text(encoding="utf-8"))
    # kubernetes-validate names files <kind>-<first label of the group>-<version>.json
    core = _k8s_dir() / f"{kind.lower()}-{(group.split('.')[0] + '-') if group else ''}{version}.json"
    if core.is_file():
        return json.loads(core.read_text(encoding="utf-8"))
    raise AssertionError(f"no schema for {api_version} {kind}: vendor its CRD schema into {SCHEMAS} (SOURCES.md)")


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of one object, as 'path: message' lines (empty when valid)."""
    schema = _schema_for(doc["apiVersion"], doc["kind"])
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def _where(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata", {})
    return f"{doc.get('kind')} {meta.get('namespace', '-')}/{meta.get('name')}"


# --- loading and building -----------------------------------------------------------------------------------------
def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def build_kustomization(folder: Path) -> list[dict[str, Any]]:
    """A small `kustomize build`: resources (files, folders), JSON 6902 `patches` with a target, `images`."""
    jsonpatch = _require("jsonpatch", "jsonpatch")
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - KUSTOMIZE_KEYS
    assert not unknown, f"{folder}/kustomization.yaml uses {sorted(unknown)}: this test only builds {KUSTOMIZE_KEYS}"
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = (folder / resource).resolve()
        docs += build_kustomization(path) if path.is_dir() else _load(path)
    for patch in spec.get("patches", []):
        target, ops = patch["target"], yaml.safe_load(patch["patch"])
        hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == (target["kind"], target["name"])]
        assert hits, f"{folder}: patch target {target} matches no resource"
        for i in hits:
            docs[i] = jsonpatch.apply_patch(docs[i], ops)
    for image in spec.get("images", []):
        _set_image(docs, image)
    return docs


def _set_image(node: Any, image: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
    elif isinstance(node, dict):
        ref = node.get("image")
        if isinstance(ref, str) and re.split(r"[@:]", ref.rsplit("/", 1)[-1])[0] == image["name"].rsplit("/", 1)[-1]:
            if ref.startswith(image["name"]):
                name = image.get("newName", image["name"])
                node["image"] = f"{name}@{image['digest']}" if "digest" in image else f"{name}:{image['newTag']}"
        for value in node.values():
            _set_image(value, image)


def _render_serving() -> list[dict[str, Any]]:
    """The vLLM Deployment + Service of a version, and the model's Rollout, Services, HTTPRoute, AnalysisTemplate."""
    from steps.release.spec import PrometheusQuery, Rollout
    from steps.rollout.serving.kubernetes import render_vllm
    from steps.rollout.serving.rollouts import ServedVersion, render_rollout

    uri = "s3://llmrelease-dev-artifacts/models/demo-qa/7"
    rollout = Rollout.model_validate({"analysis": {"interval_s": 1.5}})
    spec_query = PrometheusQuery(url="http://prometheus:9090", query="sum(up{service='{canary}'})", max_value=1)
    rollout = rollout.model_copy(update={"analysis": rollout.analysis.model_copy(update={"prometheus": spec_query})})
    served = ServedVersion("7", uri, "vllm/vllm-openai:v0.32.0", gpus=2, max_model_len=4096)
    return render_vllm("demo-qa", "7", uri, image="vllm/vllm-openai:v0.32.0", gpus=2,
                       max_model_len=4096) + render_rollout("demo-qa", served, rollout)  # fmt: skip


def _base() -> list[dict[str, Any]]:
    return build_kustomization(INFRA / "base")


OVERLAYS = sorted(p.name for p in (INFRA / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


# --- schema validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["base", *[f"overlays/{o}" for o in OVERLAYS], "serving"])
def test_every_object_validates_against_its_schema(source: str) -> None:
    """GIVEN the objects of base, an overlay, or the rendered vLLM template
    WHEN each is validated against its Kubernetes or CRD schema, unknown fields refused
    THEN none has an error."""
    docs = _render_serving() if source == "serving" else build_kustomization(INFRA / source)
    assert docs, f"{source}: no objects"
    errors = [f"{_where(d)} {line}" for d in docs for line in schema_errors(d)]
    assert not errors, f"{source}:\n" + "\n".join(errors)


def test_rendered_argo_manifests_validate() -> None:
    """GIVEN the rendered manifests under argo/
    WHEN Argo Workflows kinds go through `llmrelease lint` and the others through their schemas
    THEN there is no problem and no error."""
    from workflows.argo.lint import lint_files

    files = sorted((ROOT / "argo").glob("*.yaml"))
    assert files, "argo/ has no rendered manifests: run `llmrelease render`"
    errors = [str(p) for p in lint_files(files) if p.severity == "error"]
    for path in files:
        for doc in _load(path):
            if doc["kind"] not in ARGO_WORKFLOW_KINDS:
                errors += [f"{path.name}: {_where(doc)} {line}" for line in schema_errors(doc)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("HTTPRoute", lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(wieght=10), "wieght"),
        ("HTTPRoute", lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weight="10"), "not of type"),
        ("RayCluster", lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].update(containrs=[]), "containrs"),
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(intreval="5s"), "intreval"),
        ("ExternalSecret", lambda d: d["spec"]["data"][0].pop("remoteRef"), "remoteRef"),
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=3), "3"),
    ],
)
def test_schemas_reject_typos(kind: str, mutate: Any, expected: str) -> None:
    """GIVEN a valid object of base with one planted mistake (unknown field, wrong type, missing field)
    WHEN it is validated
    THEN the validation names the mistake, so the schema test cannot pass vacuously."""
    doc = copy.deepcopy(next(d for d in _base() if d["kind"] == kind))
    assert not schema_errors(doc)
    mutate(doc)
    errors = schema_errors(doc)
    assert errors and any(expected in e for e in errors), errors


def test_vendored_schemas_are_valid_and_sourced() -> None:
    """GIVEN every vendored CRD schema
    WHEN checked as a JSON Schema (draft 2020-12)
    THEN it is one, says where it came from, and is listed in SOURCES.md."""
    sources = (SCHEMAS / "SOURCES.md").read_text(encoding="utf-8")
    files = sorted(SCHEMAS.rglob("*.json"))
    assert len(files) >= 10
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema.get("x-llmrelease-source"), f"{path}: no x-llmrelease-source"
        assert str(path.relative_to(SCHEMAS)) in sources, f"{path} is not listed in SOURCES.md"


# --- least privilege and hardening --------------------------------------------------------------------------------
def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "Rollout"):
        return [spec["template"]["spec"]]
    if doc["kind"] == "AnalysisTemplate":
        jobs = [m["provider"]["job"] for m in spec["metrics"] if "job" in m["provider"]]
        return [job["spec"]["template"]["spec"] for job in jobs]
    if doc["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]["spec"]] + [w["template"]["spec"] for w in spec["workerGroupSpecs"]]
    return []


def test_steps_role_grants_only_what_the_steps_use() -> None:
    """GIVEN the llmrelease-steps Role
    WHEN its rules are read
    THEN they are exactly: Argo task results, and what the cluster serving plane calls (Rollouts, their status,
    AnalysisTemplates, AnalysisRuns, the model's Services and HTTPRoute), with no delete."""
    role = next(d for d in _base() if d["kind"] == "Role" and d["metadata"]["name"] == "llmrelease-steps")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = {("argoproj.io", "workflowtaskresults", v) for v in ("create", "patch")}
    expected |= {("argoproj.io", r, v) for r in ("rollouts", "analysistemplates") for v in ("get", "create", "patch")}
    expected |= {("argoproj.io", "rollouts/status", "patch"), ("argoproj.io", "analysisruns", "list")}
    expected |= {("gateway.networking.k8s.io", "httproutes", v) for v in ("get", "create")}
    expected |= {("", "services", v) for v in ("get", "create")}
    assert granted == expected
    binding = next(d for d in _base() if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "llmrelease-steps")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llmrelease-steps", "namespace": "llmrelease"}]


def test_no_rule_grants_wildcards_or_secrets() -> None:
    """GIVEN every Role and ClusterRole of base
    WHEN their rules are read
    THEN none uses '*' or touches secrets (steps get secrets as env, which needs no permission)."""
    for doc in (d for d in _base() if d["kind"] in ("Role", "ClusterRole")):
        for rule in doc["rules"]:
            values = rule["apiGroups"] + rule["resources"] + rule["verbs"]
            assert "*" not in values and "secrets" not in rule["resources"], f"{_where(doc)}: {rule}"


def test_only_api_callers_mount_a_token() -> None:
    """GIVEN every ServiceAccount of base
    WHEN automountServiceAccountToken is read
    THEN it is true only for the accounts that call the Kubernetes API (steps, sensor) and false elsewhere."""
    accounts = {
        d["metadata"]["name"]: d.get("automountServiceAccountToken") for d in _base() if d["kind"] == "ServiceAccount"
    }
    assert {name for name, mount in accounts.items() if mount is not False} == {"llmrelease-steps", "llmrelease-sensor"}
    assert all(mount is not None for mount in accounts.values()), accounts


@pytest.mark.parametrize("source", ["base", "serving"])
def test_pods_run_non_root_with_read_only_root(source: str) -> None:
    """GIVEN every pod template (MLflow, the RayCluster head and workers, a vLLM version)
    WHEN their security contexts are read
    THEN pods run as non-root and every container has a read-only root and no privilege escalation."""
    docs = _render_serving() if source == "serving" else _base()
    pods = [(d, p) for d in docs for p in _pod_specs(d)]
    assert pods
    for doc, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, _where(doc)
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, f"{_where(doc)} {container['name']}"
            assert context["allowPrivilegeEscalation"] is False, f"{_where(doc)} {container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{_where(doc)} {container['name']}"


def test_images_follow_steps_images() -> None:
    """GIVEN the images steps/core/images.py pins
    WHEN the RayCluster and the overlays' image pins are read
    THEN they are the same tags (one place to bump)."""
    from steps.core.images import EVAL_GPU_IMAGE, STEPS_IMAGE

    ray = next(d for d in _base() if d["kind"] == "RayCluster")
    assert {c["image"] for pod in _pod_specs(ray) for c in pod["containers"]} == {EVAL_GPU_IMAGE}
    pins = {name: tag for name, _, tag in (STEPS_IMAGE.rpartition(":"), EVAL_GPU_IMAGE.rpartition(":"))}
    for overlay in OVERLAYS:
        spec = yaml.safe_load((INFRA / "overlays" / overlay / "kustomization.yaml").read_text(encoding="utf-8"))
        for image in spec.get("images", []):
            if image["name"] in pins:
                assert image["newTag"] == pins[image["name"]], f"overlay {overlay}: {image} != steps/core/images.py"


def test_alerts_read_only_documented_metrics() -> None:
    """GIVEN the PrometheusRule of base
    WHEN the metric names of every expression are collected
    THEN each is one steps/evidence/metrics.py documents (or Envoy Gateway's request counter),
    and each alert has a runbook.
    """
    metrics = pytest.importorskip("steps.evidence.metrics")
    allowed = set(metrics.allowed_metric_names()) | {"envoy_cluster_upstream_rq_xx"}
    keywords = {"sum", "rate", "max", "histogram_quantile", "changes", "offset", "and", "or", "unless"}
    clauses = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    rule = next(d for d in _base() if d["kind"] == "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            expr = re.sub(clauses + r"|\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"", " ", alert["expr"])
            expr = re.sub(r"\b\d+(\.\d+)?[smhdwy]?\b", " ", expr)  # numbers and durations (offset 1d)
            names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - keywords
            assert names <= allowed, f"alert {alert['alert']}: undocumented metrics {sorted(names - allowed)}"
            runbook = ROOT / alert["annotations"]["runbook"]
            assert runbook.is_file(), f"alert {alert['alert']}: runbook {runbook} missing"


# --- Helm and Terraform -------------------------------------------------------------------------------------------
def test_helm_charts_are_pinned_with_values() -> None:
    """GIVEN infrastructure/helm/charts.yaml
    WHEN each release is read
    THEN its chart version is exact, its values file exists and parses, and no values file is orphaned."""
    helm = INFRA / "helm"
    releases = yaml.safe_load((helm / "charts.yaml").read_text(encoding="utf-8"))["releases"]
    names = {r["chart"] for r in releases}
    required = {"argo-workflows", "argo-events", "kuberay-operator", "kube-prometheus-stack", "prometheus-pushgateway"}
    assert required <= names
    for release in releases:
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", str(release["version"])), f"{release['release']}: pin an exact version"
        assert isinstance(yaml.safe_load((helm / release["values"]).read_text(encoding="utf-8")), dict)
    assert {r["values"] for r in releases} == {p.name for p in helm.glob("*.values.yaml")}


def test_terraform_parses_and_has_cpu_and_gpu_spot_node_groups() -> None:
    """GIVEN the Terraform of the EKS cluster
    WHEN every file is parsed with python-hcl2
    THEN it parses, modules are version-pinned, and the node groups include CPU and GPU spot (tainted for GPUs)."""
    hcl2 = _require("hcl2", "python-hcl2==8.1.4")
    parsed: dict[str, Any] = {}
    for path in sorted((INFRA / "terraform" / "eks").glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            parsed[path.name] = hcl2.load(handle)
    modules = {name.strip('"'): body for m in parsed["main.tf"]["module"] for name, body in m.items()}
    assert modules and all(body.get("version") for body in modules.values()), "pin every module's version"
    groups = modules["eks"]["eks_managed_node_groups"]
    assert {"cpu", "gpu_spot"} <= set(groups)
    spot = {key: value.strip('"') if isinstance(value, str) else value for key, value in groups["gpu_spot"].items()}
    assert spot["capacity_type"] == "SPOT" and "NVIDIA" in spot["ami_type"] and spot["min_size"] == 0
    assert "taints" in spot, "GPU nodes must be tainted so only GPU pods land there"
