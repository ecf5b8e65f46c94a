"""Prometheus metrics of llmrelease's steps, pushed to a Pushgateway.

Why a Pushgateway and not Argo's `metrics.prometheus` template spec: steps are batch jobs that end before any
scrape, and the values worth keeping (eval scores, tokens, cost, canary weights) are computed inside the step;
Argo's spec can only emit what its controller sees (durations, phases, output parameters), and the local runner
cannot emit controller metrics at all. A Pushgateway works the same on this machine, in CI (a real
`prometheus-pushgateway` binary in the tests) and on a cluster. See docs/evidence.md.

Every metric is a gauge holding the value of the LAST run of a step (Pushgateway semantics): counts over time
come from PromQL on the timestamps (`changes(llmrelease_rollback_last_timestamp_seconds[30d])`). Each push goes to
the group `job="llmrelease", pipeline, step, model` with POST (`pushadd`), so a push replaces only the metric
names it carries and, e.g., a failure timestamp survives the next successful run. All names, help texts and
labels are in `METRICS`; `EXTERNAL_METRICS` lists what the dashboards may read from vLLM, HAProxy, Argo and
Prometheus itself.

Pushing is best effort: unset `LLMRELEASE_PUSHGATEWAY` means no push (logged), and a gateway that is down or
refuses is a warning, never a failed step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "EXTERNAL_METRICS",
    "GATEWAY_ENV",
    "GROUPING_LABELS",
    "JOB",
    "METRICS",
    "MetricSpec",
    "MetricsBatch",
    "allowed_metric_names",
    "push",
    "record_step",
    "release_metrics",
]

_log = logging.getLogger("llmrelease.metrics")
GATEWAY_ENV = "LLMRELEASE_PUSHGATEWAY"
JOB = "llmrelease"
GROUPING_LABELS = ("pipeline", "step", "model")
Outcome = Literal["succeeded", "failed", "error", "skipped"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, type, help text and labels (beyond the grouping labels every series has)."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    kind: Literal["gauge"] = "gauge"


def _m(name: str, help_text: str, *labels: str) -> tuple[str, MetricSpec]:
    return name, MetricSpec(name=name, help=help_text, labels=labels)


METRICS: Mapping[str, MetricSpec] = dict(
    (
        _m("llmrelease_step_duration_seconds", "Wall time of the step's last run, in seconds."),
        _m("llmrelease_step_success", "1 when the step's last run succeeded, 0 when it failed."),
        _m("llmrelease_step_last_run_timestamp_seconds", "Unix time the step last finished, whatever the outcome."),
        _m("llmrelease_step_last_success_timestamp_seconds", "Unix time the step last finished successfully."),
        _m("llmrelease_step_last_failure_timestamp_seconds", "Unix time the step last failed."),
        _m(
            "llmrelease_eval_score",
            "A suite metric of the last evaluated version (accuracy, attack_success_rate, "
            "...), by role candidate/champion.",
            "suite",
            "metric",
            "role",
            "version",
        ),
        _m("llmrelease_gate_passed", "1 when the last gate decision passed, 0 when it failed.", "version"),
        _m("llmrelease_tokens", "Tokens used by the last run (eval and latency probes), by kind input/output.", "kind"),
        _m("llmrelease_run_cost_usd", "Estimated USD of the last run's generated tokens at its measured rate."),
        _m("llmrelease_cost_usd_per_1k_output_tokens", "Measured serving cost of the last latency run.", "version"),
        _m(
            "llmrelease_latency_p95_ms",
            "p95 latency of the last latency run, by kind ttft/e2e, in ms.",
            "kind",
            "version",
        ),
        _m("llmrelease_latency_slo_ms", "The latency SLO the last run was judged against (p95 E2E), in ms."),
        _m("llmrelease_canary_weight", "Percent of traffic on the candidate (0 after a rollback).", "version"),
        _m("llmrelease_rollback_last_timestamp_seconds", "Unix time of the last rollback (canary aborted)."),
        _m(
            "llmrelease_release_outcome_timestamp_seconds",
            "Unix time a release run of the model last ended, by "
            "outcome (promoted, rejected, rolled_back, failed, paused).",
            "outcome",
        ),
    )
)

# Metrics the dashboards may read that other software emits (the test of the dashboards allows these too).
EXTERNAL_METRICS: Mapping[str, str] = {
    "up": "Prometheus: 1 when the scrape of a target succeeded",
    "push_time_seconds": "Pushgateway: last successful push of a group",
    "push_failure_time_seconds": "Pushgateway: last failed push of a group",
    "process_start_time_seconds": "any Go/Python exporter: process start time",
    "vllm:generation_tokens_total": "vLLM: generated tokens, by model_name",
    "vllm:prompt_tokens_total": "vLLM: prompt tokens, by model_name",
    "vllm:e2e_request_latency_seconds_bucket": "vLLM: end-to-end request latency histogram",
    "vllm:time_to_first_token_seconds_bucket": "vLLM: TTFT histogram",
    "vllm:request_success_total": "vLLM: finished requests, by finished_reason",
    "vllm:num_requests_waiting": "vLLM: requests queued in the engine",
    "haproxy_backend_http_responses_total": "HAProxy exporter: responses by backend (proxy) and code class",
    "haproxy_process_uptime_seconds": "HAProxy exporter: process uptime",
    "haproxy_server_weight": "HAProxy exporter: a server's current weight (the live canary split)",
    "argo_workflows_gauge": "Argo Workflows controller (3.6+): workflows by phase",
    "argo_workflows_total_count": "Argo Workflows controller (3.6+): workflows ended, by phase",
    "argo_workflows_queue_depth_gauge": "Argo Workflows controller (3.6+): work queue depth, by queue_name",
    "argo_workflows_queue_latency_bucket": "Argo Workflows controller: time items wait in a queue (histogram)",
    "argo_workflows_error_count": "Argo Workflows controller: errors, by cause",
}


def allowed_metric_names() -> frozenset[str]:
    """Every metric name a dashboard may reference: ours and the documented external ones."""
    return frozenset(METRICS) | frozenset(EXTERNAL_METRICS)


class MetricsBatch:
    """The gauges of one push: a private CollectorRegistry and the grouping key (pipeline, step, model)."""

    def __init__(self, *, pipeline: str, step: str, model: str) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self.grouping = {"pipeline": pipeline, "step": step, "model": model}
        self._gauges: dict[str, Any] = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge `name` (a key of METRICS) with exactly its declared labels.

        Raises:
            ValueError: An unknown metric name, or labels other than the metric's declared ones.
        """
        from prometheus_client import Gauge

        spec = METRICS.get(name)
        if spec is None:
            raise ValueError(f"metric {name!r} is not in steps.evidence.metrics.METRICS: declare it there first")
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {name}: labels {sorted(labels)} given, {sorted(spec.labels)} declared")
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = Gauge(name, spec.help, spec.labels, registry=self.registry)
        (gauge.labels(**labels) if spec.labels else gauge).set(float(value))

    @property
    def names(self) -> list[str]:
        """The metric names set so far."""
        return sorted(self._gauges)


def record_step(
    step: str,
    outcome: Outcome,
    duration_s: float,
    model: str,
    *,
    pipeline: str = "golden-delivery",
    now: float | None = None,
    **gauges: float,
) -> MetricsBatch:
    """The metrics of one finished step: duration, success, timestamps, plus label-less gauges by short name.

    Args:
        step: The step (template) name, e.g. "gate".
        outcome: How it ended; "skipped" records only the run timestamp.
        duration_s: Its wall time.
        model: The registered model name.
        pipeline: The pipeline (WorkflowTemplate) name.
        now: Unix time of the end (default: now).
        **gauges: More label-less gauges, by name without the `llmrelease_` prefix (e.g. run_cost_usd=0.02).

    Returns:
        The batch, ready for `push`.
    """
    batch = MetricsBatch(pipeline=pipeline, step=step, model=model)
    end = time.time() if now is None else now
    batch.set("llmrelease_step_last_run_timestamp_seconds", end)
    if outcome != "skipped":
        ok = outcome == "succeeded"
        batch.set("llmrelease_step_duration_seconds", duration_s)
        batch.set("llmrelease_step_success", 1.0 if ok else 0.0)
        batch.set(f"llmrelease_step_last_{'success' if ok else 'failure'}_timestamp_seconds", end)
    for short, value in gauges.items():
        batch.set(f"llmrelease_{short}", value)
    return batch


def push(
    batch: MetricsBatch, *, gateway: str | None = None, environ: Mapping[str, str] | None = None, timeout_s: float = 5.0
) -> bool:
    """Push the batch to the Pushgateway (POST: replaces only these metric names in the group).

    Args:
        batch: What to push.
        gateway: host:port or URL of the gateway; default `$LLMRELEASE_PUSHGATEWAY`.
        environ: The environment to read (default os.environ).
        timeout_s: HTTP timeout.

    Returns:
        True when pushed; False when no gateway is configured (logged at INFO) or the push failed (a warning).
    """
    from prometheus_client import pushadd_to_gateway

    env = os.environ if environ is None else environ
    url = gateway or env.get(GATEWAY_ENV, "")
    if not url:
        _log.info("metrics not pushed (%s unset): %s", GATEWAY_ENV, ", ".join(batch.names))
        return False
    try:
        pushadd_to_gateway(url, job=JOB, registry=batch.registry, grouping_key=batch.grouping, timeout=timeout_s)
    except Exception as e:  # observability must never fail a release step
        _log.warning("metrics push to %s failed (%s: %s); the step goes on", url, type(e).__name__, e)
        return False
    return True


def _ts(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _outcome(results: Mapping[str, Any], status: str) -> str:
    canary, gate = results.get("canary") or {}, results.get("gate") or {}
    if canary.get("outcome") == "aborted":
        return "rolled_back"
    if canary.get("outcome") == "paused":
        return "paused"
    if gate.get("passed") is False:
        return "rejected"
    if canary.get("outcome") == "completed":
        return "promoted"
    return "failed" if status not in ("Succeeded", "") else "ended"


def release_metrics(
    statement: Mapping[str, Any], *, pipeline: str = "golden-delivery", now: float | None = None
) -> MetricsBatch:
    """The run-level metrics of a release, from its evidence statement (pushed by the evidence step)."""
    subject = statement["subject"][0]
    version = str(subject.get("annotations", {}).get("version", ""))
    results = statement["predicate"]["runDetails"]["llmrelease_results"]
    batch = MetricsBatch(pipeline=pipeline, step="release", model=subject["name"])
    tokens = 0.0
    for section in ("eval", "safety"):
        for role in ("candidate", "champion"):
            for suite in (results.get(section) or {}).get(role) or []:
                tokens += suite.get("output_tokens", 0) if role == "candidate" else 0
                for metric, value in suite["metrics"].items():
                    if metric != "n" and not metric.endswith("_n"):
                        v = suite["model"].rsplit(" v", 1)[-1]
                        batch.set(
                            "llmrelease_eval_score", value, suite=suite["suite"], metric=metric, role=role, version=v
                        )
    if results.get("gate") is not None:
        batch.set("llmrelease_gate_passed", 1.0 if results["gate"]["passed"] else 0.0, version=version)
    latency, cost = results.get("latency") or {}, results.get("cost") or {}
    for kind in ("ttft", "e2e"):
        if latency.get(f"p95_{kind}_ms") is not None:
            batch.set("llmrelease_latency_p95_ms", latency[f"p95_{kind}_ms"], kind=kind, version=version)
    if latency.get("slo_p95_e2e_ms") is not None:
        batch.set("llmrelease_latency_slo_ms", latency["slo_p95_e2e_ms"])
    out_tokens = tokens + float(latency.get("output_tokens") or 0)
    batch.set("llmrelease_tokens", out_tokens, kind="output")
    batch.set("llmrelease_tokens", float(latency.get("input_tokens") or 0), kind="input")
    rate = cost.get("usd_per_1k_output_tokens")
    if isinstance(rate, int | float) and rate != float("inf"):
        batch.set("llmrelease_cost_usd_per_1k_output_tokens", rate, version=version)
        batch.set("llmrelease_run_cost_usd", rate * out_tokens / 1000)
    canary = results.get("canary")
    if canary:
        weights = [float(s["weight"]) for s in canary["steps"] if s.get("weight") is not None]
        final = {"aborted": 0.0, "completed": 100.0}.get(canary["outcome"], weights[-1] if weights else 0.0)
        batch.set("llmrelease_canary_weight", final, version=version)
        if canary["outcome"] == "aborted":
            batch.set("llmrelease_rollback_last_timestamp_seconds", _ts(canary.get("aborted_at")) or time.time())
    end = _ts(statement["predicate"]["runDetails"]["metadata"].get("finishedOn")) or now or time.time()
    batch.set(
        "llmrelease_release_outcome_timestamp_seconds",
        end,
        outcome=_outcome(results, str(results.get("workflowStatus", ""))),
    )
    return batch
