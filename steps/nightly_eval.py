"""The nightly-eval step: re-evaluate one champion and fail on a significant regression.

The second step of the `nightly-regression` CronWorkflow (the first, `list-champions`, is steps/list_champions.py):

* `nightly-eval`, once per champion, evaluates it afresh on its release's golden (quality) and safety suites with
  the batch-eval machinery, bypassing the result cache (a cached result would only repeat the past: the point is
  to notice a change in the serving stack, the hardware or a provider model), then compares item by item:

  - with the **baseline**: the version's own evaluation before it was promoted (the evidence its gate judged) or,
    for a suite file changed since, the first nightly run on it (found by `steps.evals.baseline`);
  - with the **previous nightly run** (reported and logged, not gating: comparing with the baseline catches a slow
    drift that night-to-night comparisons never see).

  A **regression** is a gated metric (accuracy; attack-success, over-refusal and PII-leak rates) significantly
  worse than the baseline: the paired bootstrap CI of (tonight - baseline) excludes 0 on the worse side and, for
  pass/fail items, McNemar's test agrees (p < 1 - confidence; the confidence is the release's
  `gates.quality.confidence`). Requiring both keeps false alarms rare on a test that runs every night.

The spec is the one released: the pipeline gives the step the releases repository at the commit the champion was
registered from (a `git` input artifact, `release-repo`), and the step reads the recorded path in it
(`steps.release.source.checkout_spec`: confined to releases/, the checkout must be that commit). A champion
registered before the repository was recorded (`source` image) is evaluated with the copy in the steps image, and
the step says so in one warning line.

Every run is logged to MLflow experiment `llmrelease-nightly` (per suite and metric: tonight's value, the
baseline, the difference, the change since the previous night; the comparisons, the report and the trend of all
nightly runs of the version as artifacts). A regression fails the step with one line naming model, version, suite,
metric, values and the test; the workflow then fails.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from hera.workflows import Artifact, Output, Parameter, script
from pydantic import BaseModel, ConfigDict, Field

from registry.errors import SpecError
from registry.tags import (
    CHAMPION,
    DIGEST_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    NIGHTLY_EXPERIMENT,
    NIGHTLY_VERDICT_TAG,
)
from registry.weights_store import BUCKET_ENV
from steps.core.artifacts import ROOT
from steps.core.entry import StepParams, in_pod, pod_env, run_step
from steps.core.images import STEPS_IMAGE
from steps.evals.baseline import find_references
from steps.evals.engines.base import EvalError
from steps.evals.results import EvalReport, MetricName, SuiteResult
from steps.evals.stats import compare_metric, pair_by_id
from steps.release.source import RELEASE_REPO_IN, checkout_spec

__all__ = [
    "NIGHTLY_DIR",
    "NIGHTLY_REPORT_OUT",
    "Finding",
    "Inputs",
    "NightlyEvalParams",
    "NightlyEvalResult",
    "Outputs",
    "compare_results",
    "describe",
    "nightly_eval_step",
    "release_spec",
    "run",
]

NIGHTLY_DIR = f"{ROOT}/nightly"
NIGHTLY_REPORT_OUT = f"{NIGHTLY_DIR}/nightly-report.json"
_GATED: dict[MetricName, bool] = {  # metric -> higher is better
    "accuracy": True,
    "attack_success_rate": False,
    "over_refusal_rate": False,
    "pii_leak_rate": False,
}
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Finding(BaseModel):
    """Tonight's result on one metric of one suite against a reference (the baseline or the previous night)."""

    model_config = _FROZEN

    suite: str
    metric: str
    against: Literal["baseline", "previous"]
    reference_run: str
    n: int
    tonight: float
    reference: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    mcnemar_p: float | None
    regression: bool

    @property
    def message(self) -> str:
        """One line: values, CI, test and verdict."""
        p = f", McNemar p={self.mcnemar_p:.3g}" if self.mcnemar_p is not None else ""
        verdict = "significant regression" if self.regression else "no significant regression"
        return (
            f"{self.suite}/{self.metric} {self.tonight:.3f} vs {self.against} {self.reference:.3f} (n={self.n}): "
            f"diff {self.diff:+.3f}, {self.confidence:.0%} CI [{self.ci_low:+.3f}, {self.ci_high:+.3f}]{p}: "
            f"{verdict}"
        )


class Inputs(BaseModel):
    """What the nightly-eval step needs."""

    model_config = _FROZEN

    model_name: str
    version: str
    release: str
    work_dir: str
    shards: int = Field(default=2, ge=1)
    repository: str = ""
    """The releases repository the champion's spec was read from ("": not recorded, the image's copy is used)."""
    commit: str = ""
    """The commit of `repository` the champion was registered from."""


class Outputs(BaseModel):
    """What one nightly evaluation found."""

    model_config = _FROZEN

    model_name: str
    version: str
    findings: list[Finding]
    notes: list[str]
    run_id: str | None = None
    report_path: str = ""

    @property
    def regressions(self) -> list[Finding]:
        """The findings against the baseline that are significant regressions."""
        return [f for f in self.findings if f.regression and f.against == "baseline"]


def compare_results(
    tonight: list[SuiteResult],
    reference: dict[str, tuple[SuiteResult, str]],
    *,
    against: Literal["baseline", "previous"],
    confidence: float,
    seed: int = 0,
) -> list[Finding]:
    """Pair tonight's results with the reference results of the same suite file; one finding per gated metric.

    Args:
        tonight: Tonight's suite results.
        reference: Suite name -> (reference result, the MLflow run it came from).
        against: What the reference is.
        confidence: Two-sided confidence level of the CI; McNemar must be below 1 - confidence too.
        seed: Bootstrap seed.
    """
    out: list[Finding] = []
    for result in tonight:
        ref, run_id = reference.get(result.suite, (None, ""))
        if ref is None or ref.suite_sha256 != result.suite_sha256:
            continue
        for metric, higher in _GATED.items():
            mine, theirs = result.item_values(metric), ref.item_values(metric)
            if not mine or not theirs:
                continue
            a, b = pair_by_id(result.suite, mine, theirs)
            c = compare_metric(
                metric, a, b, higher_is_better=higher, margin=0.0, confidence=confidence, seed=seed, suite=result.suite
            )
            p = c.mcnemar.p_value if c.mcnemar else None
            out.append(
                Finding(
                    suite=result.suite,
                    metric=metric,
                    against=against,
                    reference_run=run_id,
                    n=c.n,
                    tonight=c.candidate,
                    reference=c.champion,
                    diff=c.diff,
                    ci_low=c.ci_low,
                    ci_high=c.ci_high,
                    confidence=confidence,
                    mcnemar_p=p,
                    regression=c.significantly_worse and (p is None or p < 1 - confidence),
                )
            )
    return out


def release_spec(inputs: Inputs, checkout: Path | None) -> tuple[str, str]:
    """The spec file to evaluate the champion with, and a line saying where it came from.

    With a recorded repository: `inputs.release` in `checkout`, that repository at `inputs.commit` (the step's
    `release-repo` artifact). Without one: the image's copy, and the line is a warning.

    Raises:
        SpecError: The checkout is missing, is not at that commit, or has no such spec.
    """
    if not inputs.repository:
        return inputs.release, (
            f"warning: {inputs.model_name} version {inputs.version} has no recorded releases repository: "
            f"evaluating the image's copy of {inputs.release}, which may not be the spec released; re-deliver it "
            "with golden-delivery to record it"
        )
    if checkout is None or not checkout.is_dir():
        raise SpecError(
            f"{inputs.model_name} version {inputs.version}: the release-repo artifact ({inputs.repository} at "
            f"{inputs.commit}) is not there: give nightly-eval that git artifact"
        )
    repo, commit = inputs.repository, inputs.commit
    spec_file, _, source = checkout_spec(checkout, inputs.release, repository=repo, requested=commit)
    return str(spec_file), f"spec {source.path} at {source.commit[:12]} in {source.repository} (as released)"


def run(inputs: Inputs, registry: Any, client: Any, *, home: Path, checkout: Path | None = None) -> Outputs:
    """Evaluate the champion afresh (its spec from `checkout`, see `release_spec`), compare, log to MLflow.

    Raises:
        SpecError: The release spec is missing or invalid, or not in the repository at the commit.
        EvalError: The evaluation failed, or a baseline report cannot be read.
        RegistryError: The registry cannot be read.
    """
    from steps.release.spec import load_spec, resolve_spec_path

    if not inputs.release:
        raise EvalError(
            f"champion version {inputs.version} of {inputs.model_name} has no recorded release spec "
            "(onboarding run parameter spec_path): re-deliver it with golden-delivery"
        )
    release, where = release_spec(inputs, checkout)
    inputs = inputs.model_copy(update={"release": release})
    spec = load_spec(inputs.release)
    tonight = _evaluate_fresh(inputs, client, home)
    refs = find_references(
        client,
        registry,
        inputs.model_name,
        inputs.version,
        tonight=tonight.candidate,
        spec_path=resolve_spec_path(inputs.release),
        nightly_experiment=NIGHTLY_EXPERIMENT,
    )
    confidence = spec.gates.quality.confidence
    findings = [
        *compare_results(tonight.candidate, refs.baseline, against="baseline", confidence=confidence),
        *compare_results(tonight.candidate, refs.previous, against="previous", confidence=confidence),
    ]
    report_path = tonight.save(Path(inputs.work_dir) / "nightly-report.json")
    outcome = Outputs(
        model_name=inputs.model_name,
        version=inputs.version,
        findings=findings,
        notes=[where, *refs.notes],
        report_path=str(report_path),
    )
    run_id = _log(client, outcome, tonight, refs.nightly, home)
    return outcome.model_copy(update={"run_id": run_id})


class _NoChampion:
    """A registry view without champions: batch-eval then evaluates only the version asked for."""

    def get_alias(self, name: str, alias: str) -> str | None:
        del name, alias
        return None


def _evaluate_fresh(inputs: Inputs, client: Any, home: Path) -> EvalReport:
    """Quality and safety results of the champion, computed now (the shared model cache, nothing else shared).

    The result cache and the shards are private to this run (under a scratch folder, the bucket hidden from the
    eval stores): with LLMRELEASE_S3_BUCKET set, batch-eval keeps both in S3 keyed by digest, suite and settings,
    so tonight would otherwise only read back the promotion-time results and the shards they were made of.
    """
    from steps.evals import batch
    from steps.evals.results import merge_reports

    home.mkdir(parents=True, exist_ok=True)
    (home / "model-cache").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".nightly-", dir=home))
    (scratch / "model-cache").symlink_to(home / "model-cache", target_is_directory=True)
    try:
        reports = []
        for kind in ("quality", "safety"):
            be = batch.Inputs(
                release=inputs.release,
                model_name=inputs.model_name,
                version=inputs.version,
                kind=kind,
                work_dir=str(scratch / kind),
                shards=inputs.shards,
                home=str(scratch),
                prompt_alias=CHAMPION,  # the prompt in production with this champion, not a pending candidate's
            )
            with _without(BUCKET_ENV):
                out = batch.run(be, _NoChampion(), client, log_to_mlflow=False)
            reports.append(EvalReport.load(out.report_path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return merge_reports(reports)


@contextmanager
def _without(name: str) -> Iterator[None]:
    """This process's environment without variable `name` for the block (put back afterwards)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _log(client: Any, outcome: Outputs, tonight: EvalReport, nightly: list[Any], home: Path) -> str:
    """One run in `llmrelease-nightly`: metrics per suite and metric, comparisons, report and trend."""
    from steps.core.tracking import experiment_id

    verdict = "regression" if outcome.regressions else "pass"
    tags = {
        MODEL_NAME_TAG: outcome.model_name,
        MODEL_VERSION_TAG: outcome.version,
        DIGEST_TAG: tonight.candidate[0].model_digest,
        NIGHTLY_VERDICT_TAG: verdict,
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    run = client.create_run(
        experiment_id(client, NIGHTLY_EXPERIMENT, home),
        tags=tags,
        run_name=f"nightly-{outcome.model_name}-v{outcome.version}-{stamp}",
    )
    run_id = run.info.run_id
    metrics: dict[str, float] = {}
    for result in tonight.candidate:
        metrics.update({f"{result.suite}.{k}": v for k, v in result.metrics().items()})
    for f in outcome.findings:
        key = f"{f.suite}.{f.metric}"
        metrics.update(
            {f"{key}.baseline": f.reference, f"{key}.diff": f.diff}
            if f.against == "baseline"
            else {f"{key}.vs_previous": f.diff}
        )
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=len(nightly))
    client.log_dict(
        run_id,
        {"findings": [f.model_dump() for f in outcome.findings], "notes": outcome.notes},
        "nightly/comparisons.json",
    )
    trend = [
        {"run_id": r.info.run_id, "start_time": r.info.start_time, "metrics": dict(r.data.metrics)} for r in nightly
    ] + [{"run_id": run_id, "start_time": run.info.start_time, "metrics": metrics}]
    client.log_dict(run_id, {"trend": trend}, "nightly/trend.json")
    client.log_artifact(run_id, outcome.report_path, "report")
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)


def describe(outputs: Outputs) -> str:
    """What the step prints: the notes, every finding, the MLflow run, then the verdict line."""
    if outputs.regressions:
        worst = "; ".join(f.message for f in outputs.regressions)
        verdict = f"nightly regression: {outputs.model_name} version {outputs.version} regressed: {worst}"
    else:
        verdict = f"{outputs.model_name} version {outputs.version}: no significant regression"
    logged = f"logged to MLflow experiment {NIGHTLY_EXPERIMENT}, run {outputs.run_id}"
    return "\n".join([*outputs.notes, *(f.message for f in outputs.findings), logged, verdict])


class NightlyEvalParams(StepParams):
    """Argo input parameters of the nightly-eval template."""

    step: ClassVar[str] = "nightly-eval"

    model_name: str
    version: str
    release: str
    work_dir: Path = Field(default=NIGHTLY_DIR, validate_default=True)  # a str default: Hera renders it
    shards: int = Field(default=2, ge=1)
    repository: str = ""
    commit: str = ""


class NightlyEvalResult(Output):
    """Argo output parameters of the nightly-eval template."""

    verdict: Annotated[Literal["pass"], Parameter(name="verdict")]


def _run_here(inputs: Inputs) -> Outputs:
    """`run` with this environment's registry, MLflow client, LLMRELEASE_HOME and `release-repo` checkout.

    The Ray join starts first (`join_early`), while MLflow is imported and read.
    """
    from steps.evals.ray_connect import join_early

    join_early()
    from registry import ModelRegistry
    from steps.core.tracking import llmrelease_home, mlflow_client

    checkout = in_pod(RELEASE_REPO_IN)
    return run(inputs, ModelRegistry.from_env(), mlflow_client(), home=llmrelease_home(), checkout=checkout)


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="nightly-eval",
    env=pod_env(),
    inputs=[Artifact(name="release-repo", path=RELEASE_REPO_IN, optional=True)],  # a `git` source per champion
    outputs=[Artifact(name="report", path=NIGHTLY_REPORT_OUT, optional=True)],
)
def nightly_eval_step(params: NightlyEvalParams) -> NightlyEvalResult:
    """Re-evaluate one champion; exit 1 with the reason on a significant regression against its baseline."""
    inputs = Inputs(
        model_name=params.model_name,
        version=params.version,
        release=params.release,
        work_dir=str(params.work_dir),
        shards=params.shards,
        repository=params.repository,
        commit=params.commit,
    )
    outputs = run_step("nightly-eval", lambda: _run_here(inputs))
    *lines, verdict = describe(outputs).splitlines()
    print("\n".join(lines))
    if outputs.regressions:
        print(verdict, file=sys.stderr)  # the node's message: the workflow fails naming the regression
        raise SystemExit(1)
    print(verdict)
    return NightlyEvalResult(verdict="pass")
