"""Latency metrics and their verdict: the distributions, throughput, goodput and cost of one load run.

Metrics follow vLLM's benchmark_serving: TTFT, TPOT = (E2EL - TTFT) / (output_tokens - 1), ITL (pooled gaps
between streamed chunks), E2EL, req/s, output tok/s and goodput (req/s of requests meeting every SLO). TTFT and
E2EL count from each request's scheduled send time (see `steps.rollout.loadgen` on coordinated omission); the
summary also gives E2EL from the actual send and the send-lag distribution, and says when the client was the
bottleneck. `steps.latency` (the step) and `steps.rollout.capacity` (the capacity search) judge runs with it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from steps.rollout.loadgen import LoadResult, RequestRecord

__all__ = [
    "CostModel",
    "Slo",
    "client_fault",
    "distribution",
    "gpu_cost",
    "judge",
    "provider_cost",
    "slo_held",
    "summarize",
]


class Slo(BaseModel):
    """Latency and availability objectives, and the client-bound threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p95_e2e_ms: float = Field(default=1200.0, gt=0)
    availability: float = Field(default=0.999, ge=0, le=1)
    client_bound_fraction: float = Field(default=0.1, gt=0, description="of the mean inter-arrival gap")


class CostModel(BaseModel):
    """A GPU hourly price (self-hosted) or a provider price table, and the budget ceiling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_hourly_usd: float | None = Field(default=0.8, ge=0)
    usd_per_1m_input: float | None = Field(default=None, ge=0)
    usd_per_1m_output: float | None = Field(default=None, ge=0)
    max_usd_per_1k_output_tokens: float | None = Field(default=0.5, ge=0)


_NO_COST = CostModel(max_usd_per_1k_output_tokens=None)


def distribution(values: list[float]) -> dict[str, float | None]:
    """Mean, p50, p95, p99 and max (numpy's linear percentiles, as benchmark_serving), None when empty."""
    if not values:
        return {"mean": None, "p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    arr = np.asarray(values, dtype=float)
    p50, p95, p99 = (float(x) for x in np.percentile(arr, [50, 95, 99]))
    return {"mean": float(arr.mean()), "p50": p50, "p95": p95, "p99": p99, "max": float(arr.max()), "n": len(arr)}


def gpu_cost(gpu_hourly_usd: float, output_tok_per_s: float, req_per_s: float) -> dict[str, float]:
    """USD per 1k output tokens and per request from measured throughput on a GPU billed by the hour."""
    per_s = gpu_hourly_usd / 3600
    return {
        "usd_per_1k_output_tokens": per_s / output_tok_per_s * 1000 if output_tok_per_s > 0 else float("inf"),
        "usd_per_request": per_s / req_per_s if req_per_s > 0 else float("inf"),
    }


def provider_cost(
    usd_per_1m_input: float, usd_per_1m_output: float, input_tokens: int, output_tokens: int, requests: int
) -> dict[str, float]:
    """USD per 1k output tokens and per request from a provider's per-token prices."""
    total = input_tokens * usd_per_1m_input / 1e6 + output_tokens * usd_per_1m_output / 1e6
    return {
        "usd_per_1k_output_tokens": total / output_tokens * 1000 if output_tokens else float("inf"),
        "usd_per_request": total / requests if requests else float("inf"),
    }


def _client_bound(result: LoadResult, slo: Slo) -> tuple[bool, list[str]]:
    reasons: list[str] = []
    recs = result.records
    cpu = result.client_cpu_s / result.wall_s if result.wall_s > 0 else 0.0
    if cpu >= 0.9:
        reasons.append(f"client CPU at {cpu:.0%} of one core")
    if result.spec.mode != "concurrency" and recs:
        gap_ms = 1000 / result.spec.rate
        limit = slo.client_bound_fraction * gap_ms
        lag = distribution([r.send_lag_ms for r in recs])["p95"] or 0.0
        capped = sum(r.waited_for_cap for r in recs)
        if lag > limit:
            cause = (
                f"in-flight cap {result.spec.max_in_flight} saturated ({capped} requests waited for it)"
                if capped
                else "event loop behind schedule"
            )
            reasons.append(
                f"{cause}: send lag p95 {lag:.2f} ms > {slo.client_bound_fraction:.0%} of the "
                f"{gap_ms:.2f} ms inter-arrival gap"
            )
    if result.hit_hard_deadline:
        reasons.append("the run hit its hard deadline; requests still in flight were cut")
    return bool(reasons), reasons


def _errors(recs: list[RequestRecord]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in recs:
        if r.error:
            kinds[r.error] = kinds.get(r.error, 0) + 1
    first = next((r.detail for r in recs if r.error), "")
    n = len(recs)
    return {
        "count": sum(kinds.values()),
        "rate": sum(kinds.values()) / n if n else 1.0,
        "by_kind": kinds,
        "first": first,
    }


def summarize(result: LoadResult, slo: Slo) -> dict[str, Any]:
    """All the metrics of a run (no verdict): latency distributions in ms, throughput, errors, client health."""
    recs, wall = result.records, result.wall_s
    ok = [r for r in recs if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    good = [r for r in ok if r.e2e_ms <= slo.p95_e2e_ms]
    bound, reasons = _client_bound(result, slo)
    return {
        "requests": len(recs),
        "completed": len(ok),
        "wall_s": wall,
        "ttft_ms": distribution([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "tpot_ms": distribution(
            [
                (r.e2e_ms - (r.ttft_ms or 0.0)) / (r.output_tokens - 1)
                for r in ok
                if r.output_tokens > 1 and r.ttft_ms is not None
            ]
        ),
        "itl_ms": distribution([g for r in ok for g in r.itl_ms]),
        "e2e_ms": distribution([r.e2e_ms for r in ok]),
        "e2e_from_send_ms": distribution([r.e2e_from_send_ms for r in ok]),
        "send_lag_ms": distribution([r.send_lag_ms for r in recs]),
        "req_per_s": len(ok) / wall if wall > 0 else 0.0,
        "output_tok_per_s": out_tokens / wall if wall > 0 else 0.0,
        "goodput_req_per_s": len(good) / wall if wall > 0 else 0.0,
        "output_tokens": out_tokens,
        "input_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "errors": _errors(recs),
        "warmup": {"requests": len(result.warmup), "errors": sum(1 for r in result.warmup if r.error)},
        "client_cpu_fraction": result.client_cpu_s / wall if wall > 0 else 0.0,
        "client_bound": bound,
        "client_bound_reasons": reasons,
    }


def _cost(metrics: dict[str, Any], cost: CostModel) -> dict[str, Any]:
    if cost.usd_per_1m_input is not None or cost.usd_per_1m_output is not None:
        got = provider_cost(
            cost.usd_per_1m_input or 0.0,
            cost.usd_per_1m_output or 0.0,
            metrics["input_tokens"],
            metrics["output_tokens"],
            metrics["completed"],
        )
        return {"basis": "provider price table", **got}
    got = gpu_cost(cost.gpu_hourly_usd or 0.0, metrics["output_tok_per_s"], metrics["req_per_s"])
    return {"basis": f"GPU at {cost.gpu_hourly_usd} USD/h", **got}


def judge(metrics: dict[str, Any], slo: Slo, cost: CostModel) -> tuple[str, list[str], dict[str, Any]]:
    """Verdict ("pass"/"fail"), the reasons of a fail, and the cost figures."""
    reasons: list[str] = []
    err = metrics["errors"]
    if metrics["completed"] == 0:
        reasons.append(f"no request completed out of {metrics['requests']}: {err['first'] or 'nothing was sent'}")
    if err["rate"] > 1 - slo.availability + 1e-12:
        reasons.append(
            f"error rate {err['rate']:.3f} > {1 - slo.availability:.3f} allowed by availability "
            f"{slo.availability} ({err['by_kind']})"
        )
    p95 = metrics["e2e_ms"]["p95"]
    if p95 is not None and p95 >= slo.p95_e2e_ms:
        reasons.append(f"p95 E2E {p95:.1f} ms >= SLO {slo.p95_e2e_ms:g} ms")
    figures = _cost(metrics, cost)
    ceiling = cost.max_usd_per_1k_output_tokens
    if ceiling is not None and metrics["completed"] and figures["usd_per_1k_output_tokens"] > ceiling:
        reasons.append(f"cost {figures['usd_per_1k_output_tokens']:.4f} USD/1k output tokens > ceiling {ceiling:g}")
    return ("fail" if reasons else "pass"), reasons, figures


def slo_held(metrics: dict[str, Any], slo: Slo) -> tuple[bool, list[str]]:
    """Whether the latency SLO (completion, availability, p95 E2E; cost aside) held, and why not."""
    _, reasons, _ = judge(metrics, slo, _NO_COST)
    return not reasons, reasons


def client_fault(result: LoadResult, slo: Slo) -> list[str]:
    """Why the client itself limited a run (CPU, a late event loop); a full in-flight cap is the server's doing."""
    _, reasons = _client_bound(replace(result, hit_hard_deadline=False), slo)
    return [r for r in reasons if not r.startswith("in-flight cap")]
