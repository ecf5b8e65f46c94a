"""The latency step: offers load to a serving endpoint, measures it, and judges the latency SLO and the cost.

Metrics follow vLLM's benchmark_serving (`steps.rollout.slo`, re-exported here): TTFT, TPOT, ITL, E2EL, req/s,
output tok/s and goodput; TTFT and E2EL count from each request's scheduled send time (see `steps.rollout.loadgen`
on coordinated omission); the report also says when the client was the bottleneck.

With a release, the load comes from its spec (`gates.latency.load`, else the environment's policy default, see
`steps.release.traffic`), never from the step's parameters; after it, a capacity search
(`steps.rollout.capacity`, bounded by `gates.latency.capacity.max_time_s`) finds the highest rate at which the SLO
holds. A required load the endpoint cannot hold fails with the measured capacity in the reason.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from hera.workflows import Artifact, NoneArchiveStrategy, Output, Parameter, script
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry.errors import ReleaseError, SpecError
from steps.core.artifacts import LATENCY_REPORT_OUT
from steps.core.entry import StepParams, parameter_error, run_step
from steps.core.images import STEPS_IMAGE
from steps.release.source import SPEC_IN
from steps.release.traffic import DEFAULT_CAPACITY, CapacitySearch, merge
from steps.rollout.capacity import capacity_note, measure_capacity, over_capacity
from steps.rollout.loadgen import LoadSpec, run_load
from steps.rollout.slo import CostModel, Slo, distribution, gpu_cost, judge, provider_cost, slo_held, summarize

__all__ = [
    "Slo",
    "CostModel",
    "Inputs",
    "Outputs",
    "describe",
    "inputs_from_params",
    "distribution",
    "summarize",
    "gpu_cost",
    "provider_cost",
    "judge",
    "run",
    "LatencyParams",
    "LatencyResult",
    "latency_step",
    "REPORT_NAME",
]

REPORT_NAME = "latency-report.json"


class Inputs(BaseModel):
    """What the latency step measures, and the objectives and costs it judges the measurement by."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    load: LoadSpec
    slo: Slo = Field(default_factory=Slo)
    cost: CostModel = Field(default_factory=CostModel)
    capacity: CapacitySearch | None = Field(default=None, description="every field set; None: no search")
    work_dir: Path


class Outputs(BaseModel):
    """What the latency step publishes (the report holds every metric and record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_path: Path
    verdict: Literal["pass", "fail"]
    summary: str


def run(inputs: Inputs) -> Outputs:
    """Measure the required load, search the capacity (when asked), judge and write `<work_dir>/latency-report.json`.

    Raises:
        ReleaseError: The report cannot be written to `work_dir`.
    """
    spec, slo, cost = inputs.load, inputs.slo, inputs.cost
    result = asyncio.run(run_load(spec))
    metrics = summarize(result, slo)
    verdict, reasons, figures = judge(metrics, slo, cost)
    search = inputs.capacity
    capacity = measure_capacity(spec, slo, search, metrics) if search is not None and search.enabled else None
    if capacity is not None and not slo_held(metrics, slo)[0]:
        reasons.append(over_capacity(spec, metrics, capacity))
    report = {
        "spec": spec.model_dump(),
        "slo": slo.model_dump(),
        "cost_model": cost.model_dump(),
        "verdict": verdict,
        "reasons": reasons,
        "cost": figures,
        "metrics": metrics,
        "capacity": capacity.to_json() if capacity is not None else None,
        "records": [r.to_json() for r in result.records],
        "warmup_records": [r.to_json() for r in result.warmup],
    }
    path = inputs.work_dir / REPORT_NAME
    try:
        inputs.work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))
    except OSError as e:
        raise ReleaseError(f"latency report {path}: cannot write it ({e}); fix work_dir") from e
    p95 = metrics["e2e_ms"]["p95"]
    summary = (
        f"latency {verdict}: {metrics['completed']}/{metrics['requests']} ok, p95 E2E "
        f"{'n/a' if p95 is None else f'{p95:.1f} ms'}, {metrics['req_per_s']:.2f} req/s, "
        f"{figures['usd_per_1k_output_tokens']:.4f} USD/1k out"
        + (f", {capacity_note(capacity)}" if capacity is not None else "")
        + (f"; {'; '.join(reasons)}" if reasons else "")
        + ("; CLIENT-BOUND: " + "; ".join(metrics["client_bound_reasons"]) if metrics["client_bound"] else "")
    )
    return Outputs(report_path=path, verdict="fail" if verdict == "fail" else "pass", summary=summary)


def describe(outputs: Outputs) -> str:
    """The one human line the step prints: its summary (verdict, p95, throughput, cost, reasons)."""
    return outputs.summary


class LatencyParams(StepParams):
    """Argo input parameters of the latency template (typed: Hera's runner parses them; `null` means unset).

    The load's shape (mode, rate, concurrency, requests, duration_s; `null`/"" for unset) is for runs without a
    release: with one, the spec and the environment's policy decide it, and setting one of these is refused.
    """

    step: ClassVar[str] = "latency"

    base_url: str
    model: str
    work_dir: Path
    mode: Literal["", "constant", "poisson", "concurrency"] = ""
    rate: float | None = None
    concurrency: int | None = None
    requests: int | None = None
    duration_s: float | None = None
    p95_e2e_ms: float = 1200.0
    availability: float = 0.999
    gpu_hourly_usd: float | None = 0.8
    max_usd_per_1k_output_tokens: float | None = 0.5
    usd_per_1m_input: float | None = None
    usd_per_1m_output: float | None = None
    request_timeout_s: float = 30.0
    stall_timeout_s: float = 10.0
    release: str = ""
    environment: str = ""
    prompt: str = ""


class LatencyResult(Output):
    """Argo output parameters of the latency template."""

    report_path: Annotated[str, Parameter(name="report-path")]
    verdict: Annotated[Literal["pass", "fail"], Parameter(name="verdict")]
    summary: Annotated[str, Parameter(name="summary")]


_SHAPE_FIELDS = ("mode", "rate", "concurrency", "requests", "duration_s")
_FROM_RELEASE = ("warmup", "max_tokens", "prompts")
_LOAD_FIELDS = ("base_url", "model", *_SHAPE_FIELDS, "request_timeout_s", "stall_timeout_s", *_FROM_RELEASE)
_COST_FIELDS = ("gpu_hourly_usd", "usd_per_1m_input", "usd_per_1m_output", "max_usd_per_1k_output_tokens")


def inputs_from_params(params: LatencyParams) -> Inputs:
    """The step's inputs: with a release, its load, SLO, cost ceiling and capacity search; else the parameters.

    Raises:
        SpecError: A parameter is out of range (the message names it), a load parameter is set with a release,
            or the release spec is invalid.
    """
    given = {k: v for k, v in params.model_dump().items() if v is not None and (k != "mode" or v)}
    release = _from_release(params)
    shape = [k for k in _SHAPE_FIELDS if k in given]
    if release and shape:
        raise SpecError(
            f"parameter {shape[0]}={given[shape[0]]!r}: the release spec decides the load; remove the parameter and "
            f"set gates.latency.load in {params.release}"
        )
    values = {**given, **release}
    prompt = {"prompt": values["prompt"]} if values["prompt"].strip() else {}
    try:
        return Inputs(
            load=LoadSpec.model_validate({**{k: values[k] for k in _LOAD_FIELDS if k in values}, **prompt}),
            slo=Slo(p95_e2e_ms=values["p95_e2e_ms"], availability=values["availability"]),
            cost=CostModel.model_validate({k: values.get(k) for k in _COST_FIELDS}),
            capacity=values.get("capacity"),
            work_dir=params.work_dir,
        )
    except ValidationError as e:
        raise parameter_error("latency", e) from None


def _from_release(params: LatencyParams) -> dict[str, Any]:
    """The load, SLO, cost and capacity search of the release spec in its environment (spec, then policy default)."""
    if not params.release.strip():
        return {}
    from steps.evals.suites import load_suite
    from steps.release.policy import apply_environment
    from steps.release.spec import load_spec
    from steps.release.traffic import load_fields

    spec = apply_environment(load_spec(params.release), params.environment)
    gates = spec.gates
    first = spec.evals.suites[0]
    suite = [item.prompt for item in load_suite(first.path, name=first.name).items]
    load = load_fields(gates.latency.load, suite)
    if params.prompt.strip():  # an explicit prompt replaces the suite's
        load["prompts"] = []
    return {
        **load,
        "prompt": params.prompt,
        "p95_e2e_ms": gates.latency.p95_e2e_ms,
        "availability": gates.latency.availability,
        "gpu_hourly_usd": gates.cost.gpu_hourly_usd,
        "max_usd_per_1k_output_tokens": gates.cost.max_usd_per_1k_output_tokens,
        "capacity": merge(gates.latency.capacity, DEFAULT_CAPACITY),
    }


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="latency",
    inputs=[Artifact(name="spec", path=SPEC_IN, optional=True)],  # from onboard; `release` names it
    outputs=[
        Artifact(
            name="report",
            path=LATENCY_REPORT_OUT,
            global_name="latency-report",
            archive=NoneArchiveStrategy(),
            optional=True,
        )
    ],
)
def latency_step(params: LatencyParams) -> LatencyResult:
    """Hera entry: measure the endpoint, write the report to work_dir, publish verdict pass/fail (exit 0)."""
    outputs = run_step("latency", lambda: run(inputs_from_params(params)))
    print(describe(outputs))
    return LatencyResult(report_path=str(outputs.report_path), verdict=outputs.verdict, summary=outputs.summary)
