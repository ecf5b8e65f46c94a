"""Canary analysis with Argo Rollouts' AnalysisTemplate meanings, comparing the canary against the champion.

An analysis run takes `count` measurements, `interval` seconds apart (the first one at once). Each measurement is
Successful, Failed, Inconclusive or Error:

* **Failed**: the canary's error rate (all its samples) is above `max_error_rate`, or its p95 latency is above
  `max_p95_ratio` times the champion's *and* more than `p95_slack_ms` above it (latency compares the direct,
  one-at-a-time probes of both sides when there are any: like for like; the slack keeps millisecond noise on tiny
  models from failing a canary), or a configured Prometheus query returned a value above its ceiling;
* **Inconclusive**: too few canary samples to judge (`min_samples`), or no champion p95 to compare with;
* **Error**: the measurement itself could not be taken (the probe or the Prometheus query raised);
* **Successful** otherwise.

The run is **Failed** as soon as more than `failure_limit` measurements failed, **Inconclusive** as soon as more
than `inconclusive_limit` were inconclusive, **Error** after more than `consecutive_error_limit` errors in a row
(Argo's default is 4), and **Successful** when all `count` measurements are in without crossing a limit. As in
Argo Rollouts, Failed (and Error) abort the rollout and Inconclusive pauses it for a human.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Phase",
    "Sample",
    "Measurement",
    "AnalysisPolicy",
    "PrometheusCheck",
    "judge_measurement",
    "run_analysis",
    "side_stats",
    "query_prometheus",
]

Phase = Literal["Successful", "Failed", "Inconclusive", "Error"]


class Sample(BaseModel):
    """One probe request's result: which version served it, how long it took, whether it failed."""

    model_config = ConfigDict(frozen=True)

    served_by: str
    latency_ms: float
    ok: bool
    via: Literal["router", "direct"] = "router"


class PrometheusCheck(BaseModel):
    """An optional Prometheus query whose value must stay at or below `max_value` (e.g. canary 5xx rate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="Prometheus base URL, e.g. http://prometheus:9090")
    query: str = Field(description="PromQL returning one scalar or one-element vector; {canary} is substituted")
    max_value: float


class AnalysisPolicy(BaseModel):
    """The analysis of one canary step (from the release spec's rollout.analysis)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval_s: float = 2.0
    count: int = 3
    failure_limit: int = 1
    inconclusive_limit: int = 1
    consecutive_error_limit: int = 4
    max_error_rate: float = 0.01
    max_p95_ratio: float = 1.5
    p95_slack_ms: float = 50.0
    min_samples: int = 3
    prometheus: PrometheusCheck | None = None


class Measurement(BaseModel):
    """One measurement: its phase, the canary and champion statistics, and why."""

    model_config = ConfigDict(extra="forbid")

    at: str
    phase: Phase
    canary: dict[str, Any]
    champion: dict[str, Any]
    reasons: list[str]


def side_stats(samples: list[Sample]) -> dict[str, Any]:
    """requests, errors, error_rate and p95 latency (of the successful requests) of one side's samples."""
    errors = sum(1 for s in samples if not s.ok)
    good = [s.latency_ms for s in samples if s.ok]
    return {
        "requests": len(samples),
        "errors": errors,
        "error_rate": errors / len(samples) if samples else 0.0,
        "p95_ms": float(np.percentile(good, 95)) if good else None,
    }


def judge_measurement(
    canary: list[Sample], champion: list[Sample], policy: AnalysisPolicy, prometheus_value: float | None = None
) -> tuple[Phase, list[str]]:
    """The phase of one measurement and its reasons (see the module docstring)."""
    c, b = side_stats(canary), side_stats(champion)
    direct_c, direct_b = [s for s in canary if s.via == "direct"], [s for s in champion if s.via == "direct"]
    lat_c, lat_b = (side_stats(direct_c), side_stats(direct_b)) if direct_c and direct_b else (c, b)
    failed: list[str] = []
    if c["requests"] and c["error_rate"] > policy.max_error_rate:
        failed.append(
            f"canary error rate {c['error_rate']:.3f} ({c['errors']}/{c['requests']}) > {policy.max_error_rate:g}"
        )
    if lat_c["p95_ms"] is not None and lat_b["p95_ms"]:
        ratio = lat_c["p95_ms"] / lat_b["p95_ms"]
        if ratio > policy.max_p95_ratio and lat_c["p95_ms"] - lat_b["p95_ms"] > policy.p95_slack_ms:
            failed.append(
                f"canary p95 {lat_c['p95_ms']:.0f} ms is {ratio:.2f}x the champion's {lat_b['p95_ms']:.0f} ms "
                f"> {policy.max_p95_ratio:g}x (and more than {policy.p95_slack_ms:g} ms above)"
            )
    if (
        policy.prometheus is not None
        and prometheus_value is not None
        and prometheus_value > policy.prometheus.max_value
    ):
        failed.append(
            f"prometheus {policy.prometheus.query!r} = {prometheus_value:g} > {policy.prometheus.max_value:g}"
        )
    if failed:
        return "Failed", failed
    inconclusive: list[str] = []
    if c["requests"] < policy.min_samples:
        inconclusive.append(f"{c['requests']} canary samples < {policy.min_samples} needed to judge")
    if champion and b["p95_ms"] is None:
        inconclusive.append("no successful champion sample to compare latency with")
    if inconclusive:
        return "Inconclusive", inconclusive
    summary = f"canary error rate {c['error_rate']:.3f} ({c['requests']} samples), p95 {lat_c['p95_ms'] or 0:.0f} ms"
    if lat_b["p95_ms"]:
        summary += f" vs champion {lat_b['p95_ms']:.0f} ms"
    return "Successful", [summary]


def query_prometheus(check: PrometheusCheck, canary: str, *, timeout: float = 5.0) -> float:
    """Evaluate the check's instant query (Prometheus HTTP API) and return its single value."""
    response = httpx.get(
        check.url.rstrip("/") + "/api/v1/query",
        params={"query": check.query.replace("{canary}", canary)},
        timeout=timeout,
    )
    response.raise_for_status()
    data = response.json()["data"]
    result = data["result"]
    if data["resultType"] == "scalar":
        return float(result[1])
    if data["resultType"] == "vector" and len(result) == 1:
        return float(result[0]["value"][1])
    raise ValueError(f"query {check.query!r} returned {len(result)} series: it must return exactly one value")


Measure = Callable[[], tuple[list[Sample], list[Sample], float | None]]


def run_analysis(
    measure: Measure, policy: AnalysisPolicy, *, sleep: Callable[[float], None] = time.sleep
) -> tuple[Phase, list[Measurement]]:
    """Take measurements until the run's phase is decided (see the module docstring).

    Args:
        measure: takes one measurement: (canary samples, champion samples, Prometheus value or None).
        policy: interval, count and limits.
        sleep: waits between measurements (tests pass a fake).
    """
    measurements: list[Measurement] = []
    counts = {"Failed": 0, "Inconclusive": 0}
    errors_in_a_row = 0
    for index in range(policy.count):
        if index:
            sleep(policy.interval_s)
        at = datetime.now(UTC).isoformat()
        try:
            canary, champion, prom = measure()
        except Exception as e:  # a measurement that cannot be taken is an Error, as in Argo
            errors_in_a_row += 1
            measurements.append(
                Measurement(at=at, phase="Error", canary={}, champion={}, reasons=[f"{type(e).__name__}: {e}"])
            )
            if errors_in_a_row > policy.consecutive_error_limit:
                return "Error", measurements
            continue
        errors_in_a_row = 0
        phase, reasons = judge_measurement(canary, champion, policy, prom)
        measurements.append(
            Measurement(at=at, phase=phase, canary=side_stats(canary), champion=side_stats(champion), reasons=reasons)
        )
        if phase in counts:
            counts[phase] += 1
        if counts["Failed"] > policy.failure_limit:
            return "Failed", measurements
        if counts["Inconclusive"] > policy.inconclusive_limit:
            return "Inconclusive", measurements
    if all(m.phase == "Error" for m in measurements):
        return "Error", measurements  # never call a run with no measurement in it a success
    return "Successful", measurements
