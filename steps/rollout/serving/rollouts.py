"""vLLM behind Argo Rollouts: render a model's Rollout, Services, HTTPRoute and AnalysisTemplate from the spec.

`render_rollout` fills `infrastructure/serving/vllm-rollout.yaml` (found like the vLLM template: next to the
checkout, in the working directory, or at `$LLMRELEASE_ROLLOUT_TEMPLATE`) and completes what the spec decides:

- `spec.template`: the pod template of `render_vllm`'s Deployment for the version (weights copied from its
  digest-addressed `s3://` URI by an initContainer, `vllm serve --served-model-name <model>`);
- `strategy.canary.steps`: one `setWeight` per `rollout.steps` entry with an `analysis` step (the AnalysisTemplate
  below) between two of them; `scaleDownDelaySeconds` = `rollout.keep_previous_hot_s`;
- the AnalysisTemplate's metrics: `count`, `interval`, `failureLimit`, `inconclusiveLimit` from
  `rollout.analysis` on every metric, the probe Job's arguments, and the spec's own Prometheus query when it has one.

Every object is named after the model (`<model>`, `<model>-stable`, `<model>-canary`): one Rollout serves every
version of a model, as Argo Rollouts expects. The rendered version's inputs are recorded in the Rollout's
`llmrelease.io/serving` annotation so that `undo` can render the previous one again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from steps.core.images import STEPS_IMAGE
from steps.rollout.serving.base import ServingError
from steps.rollout.serving.kubernetes import object_name, render_vllm, substitute

__all__ = [
    "DEFAULT_PROMETHEUS",
    "PLUGIN",
    "ROLLOUT_TEMPLATE_ENV",
    "SERVING_ANNOTATION",
    "RolloutOptions",
    "ServedVersion",
    "STAGED_STEP",
    "STAGE_STEPS",
    "canary_steps",
    "duration",
    "render_rollout",
    "rollout_template",
]

ROLLOUT_TEMPLATE_ENV = "LLMRELEASE_ROLLOUT_TEMPLATE"
SERVING_ANNOTATION = "llmrelease.io/serving"  # the ServedVersion the Rollout's pod template was rendered from
PLUGIN = "argoproj-labs/gatewayAPI"
DEFAULT_PROMETHEUS = "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
_TEMPLATE = Path("infrastructure") / "serving" / "vllm-rollout.yaml"
_KINDS = ["AnalysisTemplate", "HTTPRoute", "Rollout", "Service", "Service"]


@dataclass(frozen=True)
class ServedVersion:
    """What one version's pods are rendered from (recorded on the Rollout, so `undo` can render it again)."""

    version: str
    model_uri: str
    image: str
    gpus: int = 1
    max_model_len: int | None = None
    prompt: str = ""  # a prompted version's ServedPrompt as JSON (steps.rollout.serving.prompted), "" for none

    def to_json(self) -> str:
        """The annotation value."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> ServedVersion:
        """Read an annotation value back.

        Raises:
            ServingError: the value is not what `to_json` writes (naming `where`).
        """
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as e:
            raise ServingError(
                f"{where}: annotation {SERVING_ANNOTATION} is not a served version ({e}): re-deploy the version"
            ) from e


@dataclass(frozen=True)
class RolloutOptions:
    """Where and how the model's objects run (not per version)."""

    namespace: str = "llmrelease"
    gateway: str = "llmrelease"
    prometheus_url: str = DEFAULT_PROMETHEUS
    probe_image: str = STEPS_IMAGE


def rollout_template() -> Path:
    """The Rollout template: `$LLMRELEASE_ROLLOUT_TEMPLATE`, else next to the checkout, else under the cwd.

    Raises:
        ServingError: none of them exists.
    """
    candidates = [Path(p) for p in [os.environ.get(ROLLOUT_TEMPLATE_ENV)] if p]
    candidates += [Path(__file__).resolve().parents[3] / _TEMPLATE, Path.cwd() / _TEMPLATE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ServingError(
        f"Rollout template not found (looked at {', '.join(map(str, candidates))}): run from the repository root "
        f"or set {ROLLOUT_TEMPLATE_ENV}"
    )


STAGE_STEPS: tuple[dict[str, Any], ...] = (
    {"setCanaryScale": {"replicas": 1}},
    {"pause": {}},
    {"setCanaryScale": {"matchTrafficWeight": True}},
)
STAGED_STEP = 1  # the index of the staging pause: a deployed candidate waits there at weight 0


def duration(seconds: float) -> str:
    """An Argo Rollouts duration string: whole seconds as `Ns`, anything finer as `Nms`."""
    if seconds <= 0:
        raise ServingError(f"interval {seconds!r}s: give a positive number of seconds")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def canary_steps(weights: list[int], analysis_template: str) -> list[dict[str, Any]]:
    """The staging steps (`STAGE_STEPS`), then `setWeight` per traffic step with the analysis between two steps.

    Staging: the candidate's pods start (one replica) at weight 0 and the Rollout pauses there, so the latency step
    and the approval run against the candidate before it takes any user traffic; the canary step promotes past the
    pause. No analysis follows the last traffic step.
    """
    steps: list[dict[str, Any]] = [dict(step) for step in STAGE_STEPS]
    for index, weight in enumerate(weights):
        steps.append({"setWeight": weight})
        if index < len(weights) - 1:
            steps.append({"analysis": {"templates": [{"templateName": analysis_template}]}})
    return steps


def render_rollout(
    model_name: str,
    served: ServedVersion,
    rollout: Any,
    options: RolloutOptions | None = None,
    *,
    template: Path | None = None,
) -> list[dict[str, Any]]:
    """The model's Rollout, stable and canary Services, HTTPRoute and AnalysisTemplate, serving `served`.

    Args:
        model_name: Registered model name (the Rollout's and HTTPRoute's name, the served model name).
        served: The version to roll out and what its pods are rendered from.
        rollout: The release spec's `rollout` block (`steps.release.spec.Rollout`: steps, analysis,
            keep_previous_hot_s).
        options: Namespace, Gateway, Prometheus and the probe's image (defaults: `RolloutOptions()`).
        template: Another template file (default: `rollout_template()`).

    Returns:
        The objects sorted by kind (AnalysisTemplate, HTTPRoute, Rollout, Service x2), ready for `RolloutPlane`
        or `yaml.safe_dump_all`.

    Raises:
        ServingError: a bad name, URI, image or GPU count (see `render_vllm`), or a template that does not render.
    """
    options = options or RolloutOptions()
    object_name(model_name, "0")  # the model's own name must make valid Service names
    analysis = rollout.analysis
    values = {
        "NAME": model_name, "NAMESPACE": options.namespace, "MODEL": model_name, "GATEWAY": options.gateway,
        "PROMETHEUS_URL": options.prometheus_url, "STEPS_IMAGE": options.probe_image,
        "MAX_ERROR_RATE": f"{analysis.max_error_rate:g}", "MAX_P95_RATIO": f"{analysis.max_p95_ratio:g}",
    }  # fmt: skip
    path = template or rollout_template()
    docs = _load(path, values)
    by_kind = {doc["kind"]: doc for doc in docs}
    pods = render_vllm(
        model_name, served.version, served.model_uri, image=served.image, namespace=options.namespace,
        gpus=served.gpus, max_model_len=served.max_model_len, served_prompt=served.prompt,
    )  # fmt: skip
    deployment = next(doc for doc in pods if doc["kind"] == "Deployment")
    _fill_rollout(by_kind["Rollout"], deployment["spec"]["template"], served, rollout, f"{model_name}-canary")
    _fill_analysis(by_kind["AnalysisTemplate"], model_name, options, analysis)
    return sorted(docs, key=lambda doc: (doc["kind"], doc["metadata"]["name"]))


def _load(path: Path, values: dict[str, str]) -> list[dict[str, Any]]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        rendered: list[dict[str, Any]] = [substitute(doc, values) for doc in documents]
    except (OSError, yaml.YAMLError) as e:
        raise ServingError(f"Rollout template {path}: cannot be read as YAML ({e}): fix the file") from e
    except (KeyError, ValueError) as e:
        raise ServingError(
            f"Rollout template {path}: unknown or malformed placeholder {e}: use only {', '.join(sorted(values))}"
        ) from e
    kinds = sorted(doc.get("kind", "?") for doc in rendered)
    if kinds != _KINDS:
        raise ServingError(f"Rollout template {path}: holds {kinds}, not {_KINDS}: fix the file")
    return rendered


def _fill_rollout(
    doc: dict[str, Any], pod_template: dict[str, Any], served: ServedVersion, rollout: Any, analysis: str
) -> None:
    spec = doc["spec"]
    spec["template"] = pod_template
    canary = spec["strategy"]["canary"]
    canary["scaleDownDelaySeconds"] = int(rollout.keep_previous_hot_s)
    canary["steps"] = canary_steps(list(rollout.steps), analysis)
    annotations = doc["metadata"].setdefault("annotations", {})
    annotations[SERVING_ANNOTATION] = served.to_json()


def _fill_analysis(doc: dict[str, Any], model: str, options: RolloutOptions, analysis: Any) -> None:
    metrics: list[dict[str, Any]] = doc["spec"]["metrics"]
    prometheus = getattr(analysis, "prometheus", None)
    if prometheus is not None:
        metrics.append(
            {
                "name": "spec-query",
                "successCondition": f"result[0] <= {prometheus.max_value:g}",
                "failureCondition": f"result[0] > {prometheus.max_value:g}",
                "provider": {
                    "prometheus": {
                        "address": prometheus.url,
                        "query": prometheus.query.replace("{canary}", f"{model}-canary"),
                    }
                },
            }
        )
    for metric in metrics:
        metric["interval"] = duration(analysis.interval_s)
        metric["count"] = int(analysis.count)
        metric["failureLimit"] = int(analysis.failure_limit)
        metric["inconclusiveLimit"] = int(analysis.inconclusive_limit)
        job = metric.get("provider", {}).get("job")
        if job is not None:
            container = job["spec"]["template"]["spec"]["containers"][0]
            container["args"] = _probe_args(model, options.namespace, analysis)


def _probe_args(model: str, namespace: str, analysis: Any) -> list[str]:
    base = f"http://{model}-{{}}.{namespace}.svc:8000/v1"
    return [
        "--model", model, "--canary", base.format("canary"), "--stable", base.format("stable"),
        "--probes", str(analysis.probes), "--min-samples", str(analysis.min_samples),
        "--max-error-rate", f"{analysis.max_error_rate:g}", "--max-p95-ratio", f"{analysis.max_p95_ratio:g}",
        "--p95-slack-ms", f"{analysis.p95_slack_ms:g}",
    ]  # fmt: skip
