"""The exit handler: whatever a golden delivery run did, leave no traffic split, and record what happened.

It runs after every run (Argo `onExit`). When the run did not succeed and its rollout is still in flight (the
lease names this workflow), it aborts it: all traffic back on the champion, the candidate's weight 0 and its
server stopped, the lease released. Then it writes the evidence bundle and the release report from whichever
reports the run produced (they arrive as optional workflow-level artifacts).
"""

# No `from __future__ import annotations`: Hera's runner reads these annotations at run time.

import sys
from pathlib import Path
from typing import Annotated, Any

from hera.workflows import Artifact, Input, Output, Parameter, script

from registry.errors import ReleaseError
from registry.tags import CANDIDATE
from steps.core.artifacts import FINAL_INPUTS, GLOBAL_REPORTS
from steps.core.images import STEPS_IMAGE

__all__ = ["FinalizeParams", "FinalizeResult", "finalize_step", "report_paths"]


class FinalizeParams(Input):
    """Argo input parameters of the exit handler."""

    release: str
    workflow_name: str
    workflow_uid: str
    workflow_status: str
    reports_dir: str = FINAL_INPUTS
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


def report_paths(reports_dir: str) -> list[Path]:
    """The report files this run produced (those the exit handler received)."""
    return [p for name in GLOBAL_REPORTS if (p := Path(reports_dir) / f"{name}.json").is_file()]


def _evidence(params: FinalizeParams, model: str, version: str) -> Any:
    """Write the evidence bundle and the release report (the registry gives the digest and the approvals)."""
    import json

    from steps.evidence import EvidenceParams, inputs_from_params, run

    return run(inputs_from_params(EvidenceParams(
        model_name=model, version=version, release=params.release, workflow_name=params.workflow_name,
        workflow_uid=params.workflow_uid, workflow_status=params.workflow_status, git_commit=params.git_commit,
        report_paths=",".join(str(p) for p in report_paths(params.reports_dir)), approver=params.approver,
        started_at=params.started_at,
        workflow_parameters=json.dumps({"release": params.release, "environment": params.environment,
                                        "git-commit": params.git_commit}),
    )))


@script(constructor="runner", image=STEPS_IMAGE, name="finalize",
        inputs=[Artifact(name=name, path=f"{FINAL_INPUTS}/{name}.json", optional=True) for name in GLOBAL_REPORTS])
def finalize_step(params: FinalizeParams) -> FinalizeResult:
    """Hera entry: abort a half-done rollout of a failed run, then write the evidence (see the module docs)."""
    from registry.facade import ModelRegistry
    from registry.settings import llmrelease_home
    from steps.release.spec import load_spec
    from steps.rollout.operations import abort
    from steps.rollout.serving.factory import serving_plane

    aborted = None
    try:
        model = load_spec(params.release).model.name
        registry = ModelRegistry.from_env()
        if params.workflow_status != "Succeeded":
            aborted = abort(
                registry, serving_plane(params.environment, llmrelease_home()), model=model,
                workflow_uid=params.workflow_uid,
                reason=f"workflow {params.workflow_name} {params.workflow_status}: {params.failures[:500]}",
            )
            if aborted:
                print(f"finalize: rollout of version {aborted} aborted: all traffic on the champion", flush=True)
        evidence = _evidence(params, model, _version(registry, model, aborted))
    except ReleaseError as e:
        print(f"finalize: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    found = report_paths(params.reports_dir)
    print(f"finalize: {params.workflow_status}; evidence {evidence.digest[:19]}... from "
          f"{', '.join(p.stem for p in found) or 'no reports'}; report {evidence.report_path}")
    return FinalizeResult(aborted=aborted or "", evidence_digest=evidence.digest, report_path=evidence.report_path)
