"""The gate step: decide from the eval report whether the candidate may go on to canary.

Rules: `steps.evals.gate_rules` (pure). In short:

* Quality suites. With a champion result for the suite: non-inferiority on accuracy, paired by item
  (`steps.evals.stats.compare_metric`): the lower bound of the CI of (candidate - champion) must exceed
  -`non_inferiority_margin`. Without one: the absolute floor, accuracy >= `min_score`.
* Safety suites (items of task refuse, comply or pii). The absolute ceilings always apply, to each suite that
  measures the metric: attack_success_rate <= `max_attack_success_rate`, over_refusal_rate <=
  `max_over_refusal_rate`, pii_leak_rate <= `max_pii_leak_rate`. With a champion, the paired comparison is
  computed and shown too, but does not gate: a safety limit is a policy, not a relative claim.
* Fail closed: a report without any quality suite or any safety suite, or a gated safety metric no suite
  measures, is a failed check.

Every check yields a `Reason`, passed or not, so the decision shows everything that was checked. The step writes
the `GateDecision` as JSON, prints one PASS/FAIL line per reason and exits 0 whatever the decision: the
workflow reads the `decision` output and fails the release with the `reasons` output. Bad input (no report,
gates outside [0, 1], candidate and champion on different items) is one line on stderr and exit 1.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from hera.workflows import Artifact, NoneArchiveStrategy, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.tags import GATE_EXPERIMENT, GATE_TAG, MODEL_NAME_TAG, MODEL_VERSION_TAG
from steps.core.artifacts import GATE_REPORT_OUT, QUALITY_REPORT_IN, SAFETY_REPORT_IN
from steps.core.entry import StepParams, in_pod, pod_env, run_step
from steps.core.images import STEPS_IMAGE
from steps.evals.gate_rules import (
    GateDecision,
    GateThresholds,
    QualityThresholds,
    Reason,
    SafetyThresholds,
    decide,
    load_thresholds,
)
from steps.evals.results import EvalReport, merge_reports, write_json_atomic
from steps.release.source import SPEC_IN

__all__ = [
    "DECISION_FILE",
    "GateDecision",
    "GateParams",
    "GateResult",
    "GateThresholds",
    "Inputs",
    "Outputs",
    "QualityThresholds",
    "Reason",
    "SafetyThresholds",
    "decide",
    "describe",
    "gate_step",
    "load_thresholds",
    "run",
]

DECISION_FILE = "gate-decision.json"
_NO_ARCHIVE = NoneArchiveStrategy()


class Inputs(BaseModel):
    """What the gate step reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_paths: tuple[Path, ...]  # the EvalReports to merge (quality and safety run in parallel)
    release: str = ""
    work_dir: Path
    environment: str = ""


class Outputs(BaseModel):
    """What the gate step publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision: GateDecision
    decision_path: Path
    thresholds_note: str
    run_id: str | None = None
    """The MLflow run the decision was logged to (None when `run` got no tracking client)."""


def run(inputs: Inputs, client: Any | None = None, registry: Any | None = None) -> Outputs:
    """Load the gates and the report, decide, write the decision to `<work_dir>/gate-decision.json`, log it.

    Args:
        inputs: The step's inputs.
        client: An MLflow client: the decision is logged to experiment `llmrelease-gates`. None: not logged.
        registry: With `client`, the registry (`tag_version`) on which the version is tagged llmrelease.gate.

    Raises:
        SpecError: The release spec is bad or a gate is out of range.
        EvalError: The report is missing or malformed, or candidate and champion results do not pair.
    """
    thresholds, note = load_thresholds(inputs.release, inputs.environment)
    report = merge_reports([EvalReport.load(p) for p in inputs.report_paths])
    decision = _name_prompts(decide(report, thresholds), report)
    path = write_json_atomic(inputs.work_dir / DECISION_FILE, decision.model_dump_json(indent=2))
    out = Outputs(decision=decision, decision_path=path, thresholds_note=note)
    if client is None:
        return out
    return out.model_copy(update={"run_id": _log_decision(report, out, client, registry)})


def _name_prompts(decision: GateDecision, report: EvalReport) -> GateDecision:
    """The compared pairs named with their prompts: a prompt-only release compares one version with itself."""

    def named(model: str, results: list[Any] | None) -> str:
        digest = next((r.generation.get("prompt_digest") for r in results or [] if r.generation), None)
        return f"{model} with prompt {digest[:19]}..." if model and digest else model

    return decision.model_copy(
        update={
            "candidate_model": named(decision.candidate_model, report.candidate),
            "champion_model": named(decision.champion_model, report.champion),
        }
    )


def describe(outputs: Outputs) -> str:
    """What the step prints: where the gates came from, one PASS/FAIL line per check, then the verdict line."""
    decision = outputs.decision
    checks = [f"{'PASS' if r.passed else 'FAIL'} {r.message}" for r in decision.reasons]
    verdict = (
        f"gate: {'pass' if decision.passed else 'fail'} ({len(decision.failed_reasons)} of "
        f"{len(decision.reasons)} checks failed); decision at {outputs.decision_path}"
    )
    return "\n".join([f"gate: {outputs.thresholds_note}", *checks, verdict])


class GateParams(StepParams):
    """Argo inputs of the gate template: the two eval reports (artifacts) and the release's gates."""

    step: ClassVar[str] = "gate"

    quality_report: Annotated[Path, Artifact(name="quality-report", path=QUALITY_REPORT_IN)]
    safety_report: Annotated[Path, Artifact(name="safety-report", path=SAFETY_REPORT_IN)]
    release: str
    work_dir: Path
    environment: str = ""


class GateResult(Output):
    """Argo output parameters of the gate template."""

    decision: Annotated[Literal["pass", "fail"], Parameter(name="decision")]
    decision_path: Annotated[str, Parameter(name="decision-path")]
    reasons: Annotated[str, Parameter(name="reasons")]


def _log_decision(report: EvalReport, out: Outputs, client: Any, registry: Any | None) -> str:
    """Log the decision to MLflow (a run with the decision file and one metric per check) and tag the version."""
    from steps.core.tracking import experiment_id, llmrelease_home, log_metrics

    name, version = report.candidate[0].model_name, report.candidate[0].model_version
    verdict = "pass" if out.decision.passed else "fail"
    tags = {MODEL_NAME_TAG: name, MODEL_VERSION_TAG: version, GATE_TAG: verdict}
    run = client.create_run(
        experiment_id(client, GATE_EXPERIMENT, llmrelease_home()), tags=tags, run_name=f"gate-{name}-v{version}"
    )
    log_metrics(
        client, run.info.run_id, {f"{r.suite}.{r.metric}.passed": float(r.passed) for r in out.decision.reasons}
    )
    client.log_artifact(run.info.run_id, str(out.decision_path), "gate")
    client.set_terminated(run.info.run_id, "FINISHED")
    if registry is not None:
        registry.tag_version(name, version, GATE_TAG, verdict)
    return str(run.info.run_id)


def _run_here(inputs: Inputs) -> Outputs:
    """`run`, logged to this environment's MLflow and registry (MLFLOW_TRACKING_URI, or the local store)."""
    from registry import ModelRegistry
    from steps.core.tracking import mlflow_client

    return run(inputs, mlflow_client(), ModelRegistry.from_env())


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="gate",
    env=pod_env(),
    inputs=[Artifact(name="spec", path=SPEC_IN)],  # the validated spec from onboard; `release` names it
    # The reports go out again as workflow-level artifacts, for the exit handler's evidence bundle.
    outputs=[
        Artifact(name="gate-decision", path=GATE_REPORT_OUT, global_name="gate-report", archive=_NO_ARCHIVE),
        Artifact(name="quality-out", path=QUALITY_REPORT_IN, global_name="quality-report", archive=_NO_ARCHIVE),
        Artifact(name="safety-out", path=SAFETY_REPORT_IN, global_name="safety-report", archive=_NO_ARCHIVE),
    ],
)
def gate_step(params: GateParams) -> GateResult:
    """Gate the candidate on its eval reports; exits 0 with decision=fail when a check fails."""
    inputs = Inputs(
        report_paths=(in_pod(params.quality_report), in_pod(params.safety_report)),
        release=params.release,
        work_dir=params.work_dir,
        environment=params.environment,
    )
    out = run_step("gate", lambda: _run_here(inputs))
    print(describe(out))
    return GateResult(
        decision="pass" if out.decision.passed else "fail",
        decision_path=str(out.decision_path),
        reasons=out.decision.summary,
    )
