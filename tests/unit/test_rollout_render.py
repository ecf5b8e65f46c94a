"""Rendering a model's Argo Rollouts objects from the release spec, validated offline against the pinned CRD schemas.

The schemas are the vendored ones of infrastructure/schemas (npm @kubernetes-models/argo-rollouts@0.3.2, i.e. the
Argo Rollouts v1.5.0 CRDs, and @kubernetes-models/gateway-api@0.5.0); tests/unit/test_infrastructure.py validates
the same render with every other object.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from steps.release.spec import Rollout
from steps.rollout.serving.base import ServingError
from steps.rollout.serving.rollouts import (
    PLUGIN,
    STAGE_STEPS,
    RolloutOptions,
    ServedVersion,
    canary_steps,
    duration,
    render_rollout,
)
from tests.unit.test_infrastructure import schema_errors

SERVED = ServedVersion("7", "s3://artifacts/models/demo-qa/sha256-77", "vllm/vllm-openai:v0.32.0", gpus=2)


def _render(spec: dict[str, Any] | None = None, **options: Any) -> dict[str, dict[str, Any]]:
    docs = render_rollout("demo-qa", SERVED, Rollout.model_validate(spec or {}), RolloutOptions(**options))
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_the_spec_decides_steps_analysis_and_the_hot_window() -> None:
    """GIVEN a spec with steps 10/50/100, analysis every 1.5 s x4 with limits 2/0, keep_previous_hot_s 900
    WHEN rendered THEN the Rollout has setWeight 10, analysis, 50, analysis, 100; scaleDownDelaySeconds 900; the
    Gateway API plugin on the model's HTTPRoute; and every metric carries interval 1500ms, count 4, limits 2/0."""
    analysis = {"interval_s": 1.5, "count": 4, "failure_limit": 2, "inconclusive_limit": 0}
    docs = _render({"steps": [10, 50, 100], "keep_previous_hot_s": 900, "analysis": analysis})
    canary = docs["Rollout/demo-qa"]["spec"]["strategy"]["canary"]
    template = {"analysis": {"templates": [{"templateName": "demo-qa-canary"}]}}
    staged = [{"setCanaryScale": {"replicas": 1}}, {"pause": {}}, {"setCanaryScale": {"matchTrafficWeight": True}}]
    assert canary["steps"] == [*staged, {"setWeight": 10}, template, {"setWeight": 50}, template, {"setWeight": 100}]
    assert canary["scaleDownDelaySeconds"] == 900
    assert canary["trafficRouting"] == {"plugins": {PLUGIN: {"httpRoute": "demo-qa", "namespace": "llmrelease"}}}
    assert (canary["stableService"], canary["canaryService"]) == ("demo-qa-stable", "demo-qa-canary")
    metrics = docs["AnalysisTemplate/demo-qa-canary"]["spec"]["metrics"]
    assert [m["name"] for m in metrics] == ["error-rate", "p95-latency-ratio", "probe"]
    for metric in metrics:
        assert (metric["interval"], metric["count"], metric["failureLimit"], metric["inconclusiveLimit"]) == (
            "1500ms", 4, 2, 0)  # fmt: skip
    route = docs["HTTPRoute/demo-qa"]["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in route] == [("demo-qa-stable", 100), ("demo-qa-canary", 0)]


def test_the_pods_serve_the_version_from_its_digest_uri_under_the_model_name() -> None:
    """GIVEN version 7 at a digest-addressed URI WHEN rendered
    THEN the pod template copies that URI in an initContainer and runs `vllm serve --served-model-name demo-qa`
    on 2 GPUs; the selector holds no version (one Rollout for every version)."""
    rollout = _render()["Rollout/demo-qa"]["spec"]
    pod = rollout["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    assert env["MODEL_URI"] == SERVED.model_uri
    vllm = pod["containers"][0]
    assert vllm["command"][:2] == ["vllm", "serve"] and vllm["args"][:2] == ["--served-model-name", "demo-qa"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert rollout["template"]["metadata"]["labels"]["llmrelease.io/version"] == "7"
    assert "llmrelease.io/version" not in rollout["selector"]["matchLabels"]


def test_analysis_reads_vllm_series_and_runs_the_probe_against_both_services() -> None:
    """GIVEN the default analysis (max error rate 0.01, p95 ratio 1.5) and a spec Prometheus query on {canary}
    WHEN rendered THEN the error metric reads vLLM's 5xx rate of the canary Service, the latency metric the ratio
    of the two Services' p95, the probe Job gets both Services and the thresholds, and the spec's query is a metric."""
    spec = {"analysis": {"prometheus": {"url": "http://prom:9090", "query": "x{svc='{canary}'}", "max_value": 3}}}
    metrics = {m["name"]: m for m in _render(spec)["AnalysisTemplate/demo-qa-canary"]["spec"]["metrics"]}
    error = metrics["error-rate"]
    assert 'service="demo-qa-canary",status="5xx"' in error["provider"]["prometheus"]["query"]
    assert (error["successCondition"], error["failureCondition"]) == ("result[0] <= 0.01", "result[0] > 0.01")
    latency = metrics["p95-latency-ratio"]["provider"]["prometheus"]["query"]
    assert "vllm:e2e_request_latency_seconds_bucket" in latency and 'service="demo-qa-stable"' in latency
    args = metrics["probe"]["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--canary") + 1] == "http://demo-qa-canary.llmrelease.svc:8000/v1"
    assert args[args.index("--max-p95-ratio") + 1] == "1.5"
    assert metrics["spec-query"]["provider"]["prometheus"] == {"address": "http://prom:9090",
                                                               "query": "x{svc='demo-qa-canary'}"}  # fmt: skip


def test_every_rendered_object_validates_and_planted_typos_do_not() -> None:
    """GIVEN the rendered objects WHEN validated against the pinned CRD and Kubernetes schemas
    THEN none has an error; a misspelt canary field, pod field or metric field is named (the check is not vacuous)."""
    docs = _render()
    assert not [e for d in docs.values() for e in schema_errors(d)]
    for key, mutate, expected in (
        ("Rollout/demo-qa", lambda d: d["spec"]["strategy"]["canary"].update(scaleDownDelay=1), "scaleDownDelay"),
        ("Rollout/demo-qa", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagee="x"), "imagee"),
        ("AnalysisTemplate/demo-qa-canary", lambda d: d["spec"]["metrics"][0].update(failLimit=1), "failLimit"),
        ("HTTPRoute/demo-qa", lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weight="1"), "not of type"),
    ):
        doc = copy.deepcopy(docs[key])
        mutate(doc)
        assert any(expected in e for e in schema_errors(doc)), (key, expected)


def test_bad_inputs_are_one_line() -> None:
    """GIVEN an unpinned image, a model name that cannot name a Service, a template with a missing kind
    WHEN rendered THEN one line names the problem and the fix."""
    with pytest.raises(ServingError, match="no tag or digest"):
        render_rollout("demo-qa", ServedVersion("7", "s3://b/p", "vllm/vllm-openai"), Rollout())
    with pytest.raises(ServingError, match="not a valid Service name"):
        render_rollout("Demo_QA", SERVED, Rollout())
    with pytest.raises(ServingError, match="interval"):
        duration(0)


def test_a_template_without_the_analysis_template_is_refused(tmp_path: Path) -> None:
    """GIVEN an operator's template that lost its AnalysisTemplate WHEN rendered THEN one line names the file."""
    from steps.rollout.serving.rollouts import rollout_template

    text = rollout_template().read_text(encoding="utf-8")
    broken = tmp_path / "rollout.yaml"
    broken.write_text(text[: text.index("apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate")], encoding="utf-8")
    with pytest.raises(ServingError, match=f"{broken}: holds"):
        render_rollout("demo-qa", SERVED, Rollout(), template=broken)


def test_canary_steps_put_analysis_between_steps_only() -> None:
    """GIVEN a single step of 100 WHEN turned into canary steps THEN there is no analysis (nothing to compare)."""
    assert canary_steps([100], "t") == [*STAGE_STEPS, {"setWeight": 100}]
    assert duration(2.0) == "2s" and duration(0.25) == "250ms"


def test_the_shipped_demo_route_is_the_rendered_one() -> None:
    """GIVEN infrastructure/base/gateway.yaml's demo-qa HTTPRoute WHEN compared with the rendered route
    THEN they are the same object: installing base and deploying demo-qa agree on the backendRefs."""
    import yaml

    base = Path(__file__).resolve().parents[2] / "infrastructure" / "base" / "gateway.yaml"
    shipped = next(
        d for d in yaml.safe_load_all(base.read_text(encoding="utf-8"))
        if d["kind"] == "HTTPRoute" and d["metadata"]["name"] == "demo-qa"
    )  # fmt: skip
    assert shipped == _render()["HTTPRoute/demo-qa"]


def test_a_prompted_version_is_a_new_pod_template_whose_init_container_applies_the_prompt() -> None:
    """GIVEN the same weights served without and with a prompt (a prompt-only release on the cluster)
    WHEN both Rollouts are rendered
    THEN only the fetch-weights initContainer's SERVED_PROMPT differs (the ServedPrompt as JSON, "" without), so the
    controller sees a new pod template and runs the canary; both validate against the CRD schema."""
    import dataclasses

    served = dataclasses.replace(SERVED, prompt='{"name": "assistant", "version": "2"}')
    docs = {}
    for key, version in (("plain", SERVED), ("prompted", served)):
        rendered = render_rollout("demo-qa", version, Rollout())
        docs[key] = next(d for d in rendered if d["kind"] == "Rollout")
        assert not schema_errors(docs[key])

    def init_env(doc: dict[str, Any]) -> dict[str, str]:
        init = doc["spec"]["template"]["spec"]["initContainers"][0]
        assert init["name"] == "fetch-weights"
        return {e["name"]: e["value"] for e in init["env"]}

    assert init_env(docs["plain"])["SERVED_PROMPT"] == ""
    assert init_env(docs["prompted"])["SERVED_PROMPT"] == served.prompt
    plain, prompted = docs["plain"]["spec"]["template"], docs["prompted"]["spec"]["template"]
    assert plain != prompted and {**init_env(docs["plain"]), "SERVED_PROMPT": served.prompt} == init_env(
        docs["prompted"]
    )
