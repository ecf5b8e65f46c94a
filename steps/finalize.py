"""The exit handler: whatever a golden delivery run did, leave no traffic split, and record what happened.

It runs after every run (Argo `onExit`). When the run did not succeed and its rollout is still in flight (the
lease names this workflow), it aborts it: all traffic back on the champion, the candidate's weight 0 and its
server stopped, the lease released (on the cluster plane: the Rollout aborted, all traffic on stable; a canary that
finished but was never promoted is undone to the champion). Then it writes the evidence bundle and the release
report from whichever reports the run produced (they arrive as optional workflow-level artifacts).

The statement is signed (a DSSE envelope, `steps.evidence.dsse`) with the key in `$LLMRELEASE_EVIDENCE_KEY`, which
the template sets from the Secret `llmrelease-evidence-key` (key `ed25519.pem`, optional: the PEM text; locally
the runner's own environment may give a path instead). In stage and prod the evidence must be signed: without a
usable key the bundle is still written (unsigned, so the run is never left without evidence), then the step fails
with one line naming the Secret and the fix. In dev a key is used when given.
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

from pathlib import Path
from typing import Annotated, Any, ClassVar

from hera.workflows import Artifact, Output, Parameter, SecretEnv, script
from pydantic import BaseModel, ConfigDict, Field

from registry.tags import CANDIDATE
from steps.core.artifacts import FINAL_INPUTS, GLOBAL_REPORTS
from steps.core.entry import StepParams, run_step
from steps.core.images import STEPS_IMAGE
from steps.evidence.layout import KEY_ENV, KEY_SECRET, KEY_SECRET_KEY, SIGNED_ENVIRONMENTS, EvidenceError
from steps.release.source import SOURCE_FILE, SPEC_FILE, read_source, target_environment

__all__ = ["FinalizeParams", "FinalizeResult", "Inputs", "Outputs", "describe", "finalize_step", "report_paths", "run"]


class Inputs(BaseModel):
    """What the exit handler knows about the run it closes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    release: str
    workflow_name: str
    workflow_uid: str
    workflow_status: str
    """Argo's `{{workflow.status}}`: Succeeded, Failed or Error."""
    reports_dir: Path = Path(FINAL_INPUTS)
    failures: str = "[]"
    git_commit: str = ""
    environment: str = ""
    approver: str = ""
    started_at: str = ""


class Outputs(BaseModel):
    """What the exit handler did: the version it aborted (if any), the evidence it wrote from which reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow_status: str
    aborted: str | None
    evidence_digest: str
    report_path: str
    reports: list[str]


class FinalizeParams(StepParams):
    """Argo input parameters of the exit handler.

    The reports arrive as optional input artifacts under `reports_dir` (declared on the template, not as fields:
    Hera's runner gives an optional artifact field None when its container path is missing, and the local runner
    maps that path into the pod's own folder, so the step looks for the files in `reports_dir` itself).
    """

    step: ClassVar[str] = "finalize"

    release: str
    workflow_name: str
    workflow_uid: str
    workflow_status: str
    reports_dir: Path = Field(default=FINAL_INPUTS, validate_default=True)  # a str default: Hera renders it
    failures: str = "[]"
    git_commit: str = ""
    environment: str = ""
    approver: str = ""
    started_at: str = ""


class FinalizeResult(Output):
    """What the exit handler did."""

    aborted: Annotated[str, Parameter(name="aborted")]
    evidence_digest: Annotated[str, Parameter(name="evidence-digest")]
    report_path: Annotated[str, Parameter(name="report-path")]


def _version(registry: Any, model: str, aborted: str | None) -> str:
    """The version this run released: the one it aborted, else where `candidate` points (the last registration).

    A concurrent registration of the same model can move `candidate` in between; the lease prevents a concurrent
    rollout, not a concurrent registration.
    """
    if aborted:
        return aborted
    candidate = registry.get_alias(model, CANDIDATE)
    return candidate or ""


def report_paths(reports_dir: str | Path) -> list[Path]:
    """The report files this run produced (those the exit handler received)."""
    return [p for name in GLOBAL_REPORTS if (p := Path(reports_dir) / f"{name}.json").is_file()]


def _evidence(inputs: Inputs, model: str, version: str, *, online: bool = True, key: str = "") -> Any:
    """Write the evidence bundle and the release report (the registry gives the digest and the approvals).

    With `online` False (MLflow unreachable) the registry is not asked and the bundle stays in the local store.
    `key` signs the statement ("" writes it unsigned).
    """
    import json

    from steps.evidence import EvidenceParams, inputs_from_params
    from steps.evidence import run as write_evidence

    params = EvidenceParams(
        model_name=model,
        version=version,
        release=inputs.release,
        workflow_name=inputs.workflow_name,
        workflow_uid=inputs.workflow_uid,
        workflow_status=inputs.workflow_status,
        git_commit=inputs.git_commit,
        report_paths=",".join(str(p) for p in report_paths(inputs.reports_dir)),
        approver=inputs.approver,
        started_at=inputs.started_at,
        workflow_parameters=json.dumps(
            {"release": inputs.release, "environment": inputs.environment, "git-commit": inputs.git_commit}
        ),
    )
    return write_evidence(inputs_from_params(params, offline=not online), store=online, key=key)


def _signed_evidence(inputs: Inputs, model: str, version: str, *, online: bool) -> tuple[Any, EvidenceError | None]:
    """The evidence, signed when a key is configured; and why it is unsigned where it must be signed (else None).

    An unusable key or, in stage and prod, no key at all never costs the run its evidence: the bundle is written
    unsigned and the reason returned, for `run` to fail the step with once everything else is done.
    """
    import os

    key = os.environ.get(KEY_ENV, "").strip()
    required = inputs.environment in SIGNED_ENVIRONMENTS
    fix = f"put an Ed25519 PEM (`llmrelease evidence keygen`) in Secret {KEY_SECRET}, key {KEY_SECRET_KEY}"
    problem = None
    if key:
        try:
            return _evidence(inputs, model, version, online=online, key=key), None
        except EvidenceError as e:  # the key is unusable: say so after writing the evidence unsigned
            problem = EvidenceError(f"evidence of {model or 'the run'} is unsigned: {e}; {fix}")
    elif required:
        problem = EvidenceError(
            f"evidence of {model or 'the run'} is unsigned: environment {inputs.environment} requires signed evidence "
            f"and {KEY_ENV} is not set; {fix}"
        )
    return _evidence(inputs, model, version, online=online), problem


def _close_rollout(inputs: Inputs, registry: Any, plane: Any, model: str) -> tuple[str | None, str]:
    """Abort this run's rollout when the run did not succeed; returns (aborted version, released version).

    `plane` is the cluster's `RolloutPlane` (`steps.rollout.cluster_release.abort`), a local `ServingPlane`, or
    the `ReleaseError` that building the cluster plane raised (raised here, once there is something to abort).
    """
    from registry.errors import ReleaseError
    from steps.rollout import cluster_release, operations
    from steps.rollout.serving.cluster import RolloutPlane

    aborted = None
    if inputs.workflow_status != "Succeeded":
        if isinstance(plane, ReleaseError):
            raise plane
        abort = cluster_release.abort if isinstance(plane, RolloutPlane) else operations.abort
        aborted = abort(
            registry,
            plane,
            model=model,
            workflow_uid=inputs.workflow_uid,
            reason=f"workflow {inputs.workflow_name} {inputs.workflow_status}: {inputs.failures[:500]}",
        )
        if aborted:
            print(f"finalize: rollout of version {aborted} aborted: all traffic on the champion", flush=True)
    return aborted, _version(registry, model, aborted)


def _with_evidence(fault: Exception, note: str) -> Exception:
    """`fault` (a `ReleaseError`) with `note` (where the evidence is) appended, same class and exit code."""
    from registry.errors import ReleaseError

    message = f"{fault}; {note}"
    try:
        error = type(fault)(message)
    except TypeError:  # a subclass with its own constructor
        error = ReleaseError(message)
    error.exit_code = getattr(fault, "exit_code", 1)  # type: ignore[attr-defined]
    return error


def run(inputs: Inputs, registry: Any, plane: Any) -> Outputs:
    """Abort the run's rollout when the run did not succeed and still holds it, then write the evidence.

    Every run leaves an evidence bundle: with an invalid spec or an unreachable MLflow it is written to the local
    store ($LLMRELEASE_HOME/evidence/...) and the error's one line ends with where it is.

    Raises:
        SpecError: The release spec is missing or invalid (the evidence is still written).
        EvidenceError: The evidence is unsigned where it must be signed, or the key is unusable (it is written).
        ReleaseError: The abort or the evidence failed (registry, serving plane or evidence store).
    """
    from registry.errors import RegistryError, ReleaseError
    from steps.release.spec import load_spec

    fault: ReleaseError | None = None
    model, aborted, version = "", None, ""
    try:
        spec_file = Path(inputs.reports_dir) / SPEC_FILE  # the spec onboard validated, when it got that far
        model = load_spec(str(spec_file) if spec_file.is_file() else inputs.release).model.name
        aborted, version = _close_rollout(inputs, registry, plane, model)
    except ReleaseError as e:
        fault = e
    online = not isinstance(fault, RegistryError)
    try:
        evidence, unsigned = _signed_evidence(inputs, model, version, online=online)
    except RegistryError as e:  # its line says where the bundle is kept
        raise (e if fault is None else _with_evidence(fault, str(e))) from fault or e
    if fault is not None:
        raise _with_evidence(fault, f"the evidence bundle is kept locally at {evidence.bundle_path}") from fault
    if unsigned is not None:
        raise _with_evidence(unsigned, f"the unsigned bundle is at {evidence.bundle_path}")
    return Outputs(
        workflow_status=inputs.workflow_status,
        aborted=aborted,
        evidence_digest=evidence.digest,
        report_path=str(evidence.report_path),
        reports=[p.stem for p in report_paths(inputs.reports_dir)],
    )


def describe(outputs: Outputs) -> str:
    """The one human line: the run's status, the evidence digest, the reports it came from, the report path."""
    return (
        f"finalize: {outputs.workflow_status}; evidence {outputs.evidence_digest[:19]}... from "
        f"{', '.join(outputs.reports) or 'no reports'}; report {outputs.report_path}"
    )


def _run_here(inputs: Inputs) -> Outputs:
    """`run` with this environment's registry and plane (a cluster plane that cannot be built: its error)."""
    from registry.errors import ReleaseError
    from registry.facade import ModelRegistry
    from registry.settings import llmrelease_home
    from steps.rollout.serving.factory import rollout_plane, serving_plane

    try:
        plane: Any = rollout_plane(inputs.environment)
    except ReleaseError as e:  # no kubeconfig, a bad policy: the evidence is still written, then the step fails
        plane = e
    return run(inputs, ModelRegistry.from_env(), plane or serving_plane(inputs.environment, llmrelease_home()))


def _with_source(inputs: Inputs) -> Inputs:
    """`inputs` with the environment and the commit the onboard step resolved (its `spec-source` artifact)."""
    source = read_source(Path(inputs.reports_dir) / SOURCE_FILE)
    if source is None:  # onboard did not finish: what the run was given
        return inputs.model_copy(update={"environment": target_environment(inputs.environment, None)})
    return inputs.model_copy(update={"environment": source.environment, "git_commit": source.commit})


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="finalize",
    inputs=[
        *(Artifact(name=name, path=f"{FINAL_INPUTS}/{name}.json", optional=True) for name in GLOBAL_REPORTS),
        Artifact(name="release-spec", path=f"{FINAL_INPUTS}/{SPEC_FILE}", optional=True),
        Artifact(name="spec-source", path=f"{FINAL_INPUTS}/{SOURCE_FILE}", optional=True),
    ],
    env=[SecretEnv(name=KEY_ENV, secret_name=KEY_SECRET, secret_key=KEY_SECRET_KEY, optional=True)],
)
def finalize_step(params: FinalizeParams) -> FinalizeResult:
    """Hera entry: abort a half-done rollout of a failed run, then write the evidence (see the module docs)."""
    inputs = Inputs.model_validate(params.model_dump())
    outputs = run_step("finalize", lambda: _run_here(_with_source(inputs)))
    print(describe(outputs))
    return FinalizeResult(
        aborted=outputs.aborted or "", evidence_digest=outputs.evidence_digest, report_path=outputs.report_path
    )
