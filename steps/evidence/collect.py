"""The evidence step: write the bundle and report into the local store, log them to MLflow, tag the version.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from hera.workflows import Artifact, Input, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.errors import RegistryError, ReleaseError
from registry.tags import (
    DIGEST_TAG,
    EVIDENCE_DIGEST_TAG,
    EVIDENCE_EXPERIMENT,
    EVIDENCE_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    WORKFLOW_UID_TAG,
    approvals_from_tags,
)
from steps.core.images import STEPS_IMAGE
from steps.evidence.bundle import write_bundle
from steps.evidence.layout import KEY_ENV, STATEMENT
from steps.evidence.prompt import collect_prompt
from steps.evidence.statement import Inputs

__all__ = [
    "EvidenceParams",
    "EvidenceResult",
    "Outputs",
    "evidence_root",
    "evidence_step",
    "inputs_from_params",
    "run",
]


def evidence_root(environ: Mapping[str, str] | None = None) -> Path:
    """The local artifact store of evidence: `$LLMRELEASE_HOME/evidence`."""
    from steps.core.tracking import llmrelease_home

    return llmrelease_home(environ) / "evidence"


class Outputs(BaseModel):
    """What the evidence step publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: str
    bundle_path: str
    report_path: str
    run_id: str


def _store_in_mlflow(inputs: Inputs, bundle: Path, digest: str) -> str:
    """Log the bundle as artifacts of a run in `llmrelease-evidence`; tag the version with the run id and digest."""
    from registry import ModelRegistry
    from steps.core.tracking import experiment_id, llmrelease_home, mlflow_client

    client = mlflow_client()
    tags = {
        MODEL_NAME_TAG: inputs.model_name,
        MODEL_VERSION_TAG: inputs.version,
        WORKFLOW_UID_TAG: inputs.workflow_uid,
        EVIDENCE_DIGEST_TAG: digest,
    }
    run = client.create_run(
        experiment_id(client, EVIDENCE_EXPERIMENT, llmrelease_home()),
        tags=tags,
        run_name=f"evidence-{inputs.model_name}-v{inputs.version or 'none'}",
    )
    client.log_artifacts(run.info.run_id, str(bundle), "evidence")
    client.set_terminated(run.info.run_id, "FINISHED")
    if inputs.version:
        value = json.dumps(
            {
                "run_id": run.info.run_id,
                "digest": digest,
                "workflow_uid": inputs.workflow_uid,
                "workflow_status": inputs.workflow_status,  # `llmrelease status`: this version's run has ended
                "path": str(bundle),
            }
        )
        ModelRegistry.from_env().tag_version(inputs.model_name, inputs.version, EVIDENCE_TAG, value)
    return str(run.info.run_id)


def run(inputs: Inputs, *, store: bool = True, key: str | None = None) -> Outputs:
    """Write the bundle and the HTML report into the local evidence store; log both to MLflow when `store`.

    Args:
        inputs: What the run was.
        store: Log to MLflow and tag the version (False: the local store only).
        key: The signing key (a PEM path or PEM text); None takes `$LLMRELEASE_EVIDENCE_KEY`, "" signs nothing.

    Raises:
        EvidenceError: The signing key is unusable.
        RegistryError: MLflow refused or is unreachable (the bundle stays in the local store).
    """
    from steps.evidence.report import write_report

    uid = inputs.workflow_uid or f"local-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    bundle = evidence_root() / (inputs.model_name or "unknown") / (inputs.version or "unregistered") / uid
    digest = write_bundle(inputs, bundle, key=key if key is not None else os.environ.get(KEY_ENV))
    report = write_report(bundle)
    try:
        run_id = _store_in_mlflow(inputs, bundle, digest) if store else ""
    except RegistryError as e:  # unreachable within the deadline (registry.retry): say where the bundle is
        raise RegistryError(
            f"storing evidence {digest[:23]}... in MLflow failed: {e}; the bundle is kept at {bundle}"
        ) from e
    except ReleaseError:
        raise
    except Exception as e:  # MlflowException, OSError: one line naming where the bundle still is
        from registry.client import short_error

        raise RegistryError(
            f"storing evidence {digest[:23]}... in MLflow failed ({short_error(e)}); the bundle is kept at {bundle}: "
            "fix MLFLOW_TRACKING_URI or the server and re-run the evidence step"
        ) from e
    return Outputs(digest=digest, bundle_path=str(bundle), report_path=str(report), run_id=run_id)


class EvidenceParams(Input):
    """Argo input parameters of the evidence template."""

    model_name: str
    version: str = ""
    release: str = ""
    workflow_name: str = ""
    workflow_uid: str = ""
    workflow_status: str = ""
    git_commit: str = ""
    report_paths: str = ""
    approver: str = ""
    started_at: str = ""
    workflow_parameters: str = ""
    pipeline: str = "golden-delivery"
    work_dir: str = "/tmp/llmrelease/evidence"


class EvidenceResult(Output):
    """Argo output parameters of the evidence template."""

    digest: Annotated[str, Parameter(name="digest")]
    report_path: Annotated[str, Parameter(name="report-path")]
    bundle_path: Annotated[str, Parameter(name="bundle-path")]


def _version_facts(name: str, version: str) -> tuple[str, list[dict[str, Any]]]:
    """The version's weights digest and decoded approval tags ("" and [] when the registry has none)."""
    from steps.core.tracking import mlflow_client

    if not (name and version):
        return "", []
    try:
        tags = dict(mlflow_client().get_model_version(name, version).tags or {})
    except Exception:  # evidence of a failed run must not need a registered version
        return "", []
    approvals = [a.model_dump(mode="json") for _, a in sorted(approvals_from_tags(tags).items())]
    return tags.get(DIGEST_TAG, ""), approvals


def inputs_from_params(params: EvidenceParams, *, offline: bool = False) -> Inputs:
    """Typed inputs from the Argo string parameters (the registry gives the digest and approvals unless `offline`)."""
    from steps.core.git import resolve_git_commit

    digest, approvals = ("", []) if offline else _version_facts(params.model_name, params.version)
    try:
        wf_params = json.loads(params.workflow_parameters) if params.workflow_parameters.strip() else {}
    except ValueError:
        wf_params = {"raw": params.workflow_parameters}
    if isinstance(wf_params, list):  # Argo's {{workflow.parameters.json}} is a list of {name, value}
        wf_params = {str(p.get("name")): str(p.get("value")) for p in wf_params if isinstance(p, dict)}
    return Inputs(
        model_name=params.model_name,
        version=params.version,
        model_digest=digest,
        release=params.release,
        workflow_name=params.workflow_name,
        workflow_uid=params.workflow_uid,
        workflow_status=params.workflow_status,
        workflow_parameters={str(k): str(v) for k, v in dict(wf_params).items()},
        git_commit=resolve_git_commit(params.git_commit),
        approver=params.approver,
        approvals=approvals,
        report_paths=[p.strip() for p in params.report_paths.split(",") if p.strip()],
        started_at=params.started_at,
        prompt=None if offline else collect_prompt(params.release),
    )


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="evidence",
    outputs=[
        Artifact(name="evidence", path="{{inputs.parameters.work_dir}}/bundle", optional=True),
        Artifact(name="report", path="{{inputs.parameters.work_dir}}/release-report.html", optional=True),
    ],
)
def evidence_step(params: EvidenceParams) -> EvidenceResult:
    """Write, store and report the evidence bundle of this run (also for failed runs); publish its digest."""
    from steps.evidence.metrics import push, release_metrics

    try:
        inputs = inputs_from_params(params)
        out = run(inputs)
    except ReleaseError as e:
        print(f"evidence: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    work = Path(params.work_dir)
    shutil.copytree(out.bundle_path, work / "bundle", dirs_exist_ok=True)
    shutil.copyfile(out.report_path, work / "release-report.html")
    statement = json.loads((Path(out.bundle_path) / STATEMENT).read_text(encoding="utf-8"))
    try:
        push(release_metrics(statement, pipeline=params.pipeline))
    except Exception as e:  # observability must never fail the evidence step
        print(f"evidence: metrics not pushed ({type(e).__name__}: {e})", file=sys.stderr)
    missing = statement["predicate"]["runDetails"]["llmrelease_results"]["missing"]
    print(f"evidence: {out.digest} for {inputs.model_name} v{inputs.version or '-'} in {out.bundle_path}")
    print(
        f"evidence: MLflow run {out.run_id}; report {out.report_path}; missing: "
        + (", ".join(str(m.get("kind")) for m in missing) or "none")
    )
    return EvidenceResult(digest=out.digest, report_path=out.report_path, bundle_path=out.bundle_path)
