"""The evidence step: one signed, digest-checked bundle per release run, stored with the model version.

A bundle is a directory::

    statement.json      in-toto Statement v1 with a SLSA Provenance v1 predicate (see `build_statement`)
    inputs/<spec>       the release spec as it was read
    results/*.json      the reports the run produced, byte for byte (quality, safety, gate, latency, canary log)
    manifest.json       sha256 and size of every file above
    manifest.sha256     the evidence digest: sha256 of manifest.json's bytes
    manifest.sig        optional Ed25519 signature of the evidence digest
    report.html         the HTML release report (shows the digest, so it is outside the manifest)

It is written to the artifact store (`$LLMRELEASE_HOME/evidence/<model>/<version>/<workflow-uid>/`), logged as
the artifacts of an MLflow run in experiment `llmrelease-evidence`, and the model version is tagged
`llmrelease.evidence` with the run id and the digest. `verify_bundle` recomputes every digest; any change, added
or removed file fails, naming the file. Failed runs get evidence too: a report that is missing is recorded as
missing, never an error.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import base64
import hashlib
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

from steps.errors import RegistryError, ReleaseError
from steps.evals.results import EvalReport
from steps.images import EVAL_GPU_IMAGE, STEPS_IMAGE

__all__ = [
    "BUILD_TYPE",
    "BUILDER_ID",
    "EVIDENCE_EXPERIMENT",
    "EVIDENCE_TAG",
    "EvidenceError",
    "EvidenceParams",
    "EvidenceResult",
    "Inputs",
    "Outputs",
    "Verified",
    "build_statement",
    "classify",
    "evidence_root",
    "evidence_step",
    "run",
    "sign_digest",
    "summarize_results",
    "verify_bundle",
    "write_bundle",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://llmrelease.dev/buildtypes/golden-delivery/v1"
BUILDER_ID = "https://llmrelease.dev/builders/argo-workflows/v1"
EVIDENCE_EXPERIMENT = "llmrelease-evidence"
EVIDENCE_TAG = "llmrelease.evidence"
APPROVAL_TAG_PREFIX = "llmrelease.approval."
KEY_ENV, PUBKEY_ENV = "LLMRELEASE_EVIDENCE_KEY", "LLMRELEASE_EVIDENCE_PUBKEY"
MANIFEST, DIGEST_FILE, SIGNATURE, STATEMENT, REPORT = (
    "manifest.json",
    "manifest.sha256",
    "manifest.sig",
    "statement.json",
    "report.html",
)
_OUTSIDE_MANIFEST = frozenset({MANIFEST, DIGEST_FILE, SIGNATURE, REPORT})
EXPECTED_KINDS = ("quality", "safety", "gate", "latency", "canary")
RESULT_FILES = {
    "quality": "quality-report.json",
    "safety": "safety-report.json",
    "eval": "eval-report.json",
    "gate": "gate-decision.json",
    "latency": "latency-report.json",
    "canary": "canary-log.json",
}


class EvidenceError(ReleaseError):
    """An evidence bundle is missing, changed, or its signature does not verify; names the file at fault."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- result files ----


def classify(data: Any) -> str:
    """The kind of a result file from its JSON: quality, safety, eval (both), gate, latency, canary or other."""
    if not isinstance(data, dict):
        return "other"
    if isinstance(data.get("candidate"), list):
        tasks = {e.get("task") for s in data["candidate"] for e in (s.get("examples") or []) if isinstance(e, dict)}
        safety, quality = bool(tasks & {"refuse", "comply", "pii"}), bool(tasks - {"refuse", "comply", "pii"})
        return "eval" if safety and quality else "safety" if safety else "quality"
    if "passed" in data and "reasons" in data:
        return "gate"
    if "metrics" in data and "slo" in data:
        return "latency"
    if "steps" in data and "outcome" in data:
        return "canary"
    return "other"


def _load(path: Path) -> tuple[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "other", None
    return classify(data), data


def _eval_summary(data: Any) -> dict[str, Any]:
    try:
        report = EvalReport.model_validate(data)
    except ValueError as e:
        return {"error": f"not a valid eval report ({str(e).splitlines()[0]})"}
    out: dict[str, Any] = {}
    for side, suites in (("candidate", report.candidate), ("champion", report.champion or [])):
        out[side] = [
            {
                "suite": s.suite,
                "model": f"{s.model_name} v{s.model_version}",
                "model_digest": s.model_digest,
                "suite_sha256": s.suite_sha256,
                "metrics": s.metrics(),
                "output_tokens": sum(e.output_tokens for e in s.examples),
            }
            for s in suites
        ]
    return out


def _latency_summary(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    m = data.get("metrics", {})
    latency = {
        "verdict": data.get("verdict"),
        "reasons": data.get("reasons", []),
        "p95_ttft_ms": (m.get("ttft_ms") or {}).get("p95"),
        "p95_e2e_ms": (m.get("e2e_ms") or {}).get("p95"),
        "slo_p95_e2e_ms": (data.get("slo") or {}).get("p95_e2e_ms"),
        "req_per_s": m.get("req_per_s"),
        "requests": m.get("requests"),
        "completed": m.get("completed"),
        "error_rate": (m.get("errors") or {}).get("rate"),
        "output_tokens": m.get("output_tokens"),
        "input_tokens": m.get("input_tokens"),
    }
    cost = {
        **(data.get("cost") or {}),
        "ceiling_usd_per_1k_output_tokens": (data.get("cost_model") or {}).get("max_usd_per_1k_output_tokens"),
    }
    return latency, cost


def _canary_summary(data: dict[str, Any]) -> dict[str, Any]:
    steps = [
        {
            "weight": s.get("weight"),
            "phase": s.get("phase"),
            "started_at": s.get("started_at"),
            "measurements": len(s.get("measurements") or []),
        }
        for s in data.get("steps") or []
    ]
    keys = ("candidate", "champion", "router", "outcome", "aborted_at", "abort_reason")
    return {**{k: data.get(k) for k in keys}, "steps": steps}


def summarize_results(found: Mapping[str, Any]) -> dict[str, Any]:
    """The `llmrelease_results` section: a summary of each result by kind (None where the run produced none).

    Args:
        found: kind -> parsed JSON of that result file (see `classify`).
    """
    evals = {k: _eval_summary(found[k]) for k in ("quality", "safety", "eval") if k in found}
    gate = found.get("gate")
    latency, cost = _latency_summary(found["latency"]) if "latency" in found else (None, None)
    return {
        "eval": evals.get("quality") or evals.get("eval"),
        "safety": evals.get("safety") or evals.get("eval"),
        "gate": None
        if gate is None
        else {
            "passed": gate.get("passed"),
            "reasons": [{k: r.get(k) for k in ("metric", "suite", "passed", "message")} for r in gate["reasons"]],
        },
        "latency": latency,
        "cost": cost,
        "canary": _canary_summary(found["canary"]) if "canary" in found else None,
    }


# ---- the statement ----


class Inputs(BaseModel):
    """What the evidence step records (every field but model_name may be empty on a failed run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str = ""
    model_digest: str = ""  # sha256:<hex> of the weights; looked up in the registry when empty
    release: str = ""
    workflow_name: str = ""
    workflow_uid: str = ""
    workflow_status: str = ""
    workflow_parameters: dict[str, str] = {}
    git_commit: str = ""
    report_paths: list[str] = []
    approver: str = ""
    approvals: list[dict[str, Any]] = []  # the version's llmrelease.approval.<env> tags, decoded
    started_at: str = ""
    finished_at: str = ""


def _descriptor(name: str, path: Path, uri: str) -> dict[str, Any]:
    return {"name": name, "uri": uri, "digest": {"sha256": _sha256(path)}}


def _dependencies(inputs: Inputs, found: Mapping[str, Any], spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    deps: dict[str, dict[str, Any]] = {}
    for suite in [*((spec or {}).get("evals", {}).get("suites") or []), (spec or {}).get("evals", {}).get("safety")]:
        if isinstance(suite, dict) and Path(str(suite.get("path"))).is_file():
            deps[f"suite:{suite['name']}"] = _descriptor(f"suite:{suite['name']}", Path(suite["path"]), suite["path"])
    for kind in ("quality", "safety", "eval"):
        for side in ("candidate", "champion"):
            for s in (found.get(kind) or {}).get(side) or []:
                name = f"suite:{s.get('suite')}"
                deps.setdefault(name, {"name": name, "digest": {"sha256": s.get("suite_sha256", "")}})
                if side == "champion":
                    model = f"model:{s.get('model_name')}@{s.get('model_version')}"
                    deps[model] = {
                        "name": model,
                        "digest": {"sha256": str(s.get("model_digest", "")).split(":")[-1]},
                        "annotations": {"role": "champion"},
                    }
    policy = Path("policy/platform-policy.yaml")
    if policy.is_file():
        deps["policy"] = _descriptor("policy", policy, str(policy))
    images = [
        {"name": f"image:{n}", "uri": f"oci://{ref}"}
        for n, ref in (("steps", STEPS_IMAGE), ("eval-gpu", EVAL_GPU_IMAGE))
    ]
    return [*deps.values(), *images]


def build_statement(
    inputs: Inputs, spec_copy: Path | None, results: list[dict[str, Any]], found: Mapping[str, Any]
) -> dict[str, Any]:
    """The in-toto Statement v1 / SLSA Provenance v1 of one release run.

    Args:
        inputs: What the run was (model, workflow, commit, approver, times).
        spec_copy: The bundle's copy of the release spec, or None when it could not be read.
        results: One entry per result file (name, uri in the bundle, digest, kind) or missing report.
        found: kind -> parsed JSON of each result file.
    """
    import yaml

    spec = yaml.safe_load(spec_copy.read_text(encoding="utf-8")) if spec_copy else None
    release = {"path": inputs.release, "content": spec if isinstance(spec, dict) else None}
    if spec_copy:
        release["digest"] = {"sha256": _sha256(spec_copy)}
    digest = inputs.model_digest.removeprefix("sha256:")
    subject = {
        "name": inputs.model_name,
        "digest": {"sha256": digest} if digest else {},
        "annotations": {"version": inputs.version},
    }
    approval = next((a for a in inputs.approvals if not inputs.approver or a.get("approver") == inputs.approver), None)
    approval = approval or ({"approver": inputs.approver, "approved_at": None} if inputs.approver else None)
    present = {r["kind"] for r in results if "digest" in r}
    covered = present | {r["kind"] for r in results} | ({"quality", "safety"} if "eval" in present else set())
    missing = [r for r in results if "digest" not in r] + [
        {"kind": k, "reason": "not produced by this run"} for k in EXPECTED_KINDS if k not in covered
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "release": release,
                    "gitCommit": inputs.git_commit,
                    "workflow": {
                        "name": inputs.workflow_name,
                        "uid": inputs.workflow_uid,
                        "parameters": inputs.workflow_parameters,
                    },
                },
                "resolvedDependencies": _dependencies(inputs, found, spec if isinstance(spec, dict) else None),
            },
            "runDetails": {
                "builder": {"id": os.environ.get("LLMRELEASE_BUILDER_ID", BUILDER_ID)},
                "metadata": {
                    "invocationId": inputs.workflow_uid,
                    "startedOn": inputs.started_at or None,
                    "finishedOn": inputs.finished_at or _now(),
                },
                "byproducts": [r for r in results if "digest" in r],
                "llmrelease_results": {
                    "workflowStatus": inputs.workflow_status,
                    **summarize_results(found),
                    "approval": approval,
                    "missing": missing,
                },
            },
        },
    }


# ---- the bundle ----


def _copy_results(inputs: Inputs, bundle: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results: list[dict[str, Any]] = []
    found: dict[str, Any] = {}
    for raw in inputs.report_paths:
        source = Path(raw)
        if not source.is_file():
            kind = next((k for k in EXPECTED_KINDS if k in source.name), "unknown")
            results.append({"kind": kind, "path": raw, "reason": "file not found"})
            continue
        kind, data = _load(source)
        name = RESULT_FILES.get(kind, source.name)
        target = bundle / "results" / name
        n = 2
        while target.exists():
            target, n = bundle / "results" / f"{Path(name).stem}-{n}.json", n + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        uri = target.relative_to(bundle).as_posix()
        results.append(
            {
                "name": kind,
                "kind": kind,
                "uri": uri,
                "digest": {"sha256": _sha256(target)},
                "mediaType": "application/json",
                "annotations": {"source": raw},
            }
        )
        if kind != "other":
            found.setdefault(kind, data)
    return results, found


def _write_manifest(bundle: Path) -> str:
    files = sorted(
        p for p in bundle.rglob("*") if p.is_file() and p.relative_to(bundle).as_posix() not in _OUTSIDE_MANIFEST
    )
    entries = [
        {"path": p.relative_to(bundle).as_posix(), "sha256": _sha256(p), "size": p.stat().st_size} for p in files
    ]
    text = json.dumps({"version": 1, "algorithm": "sha256", "files": entries}, indent=2, sort_keys=True) + "\n"
    (bundle / MANIFEST).write_text(text, encoding="utf-8")
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    (bundle / DIGEST_FILE).write_text(digest + "\n", encoding="utf-8")
    return digest


def write_bundle(inputs: Inputs, bundle: Path, *, key_path: str | None = None) -> str:
    """Write the bundle for `inputs` into `bundle` (emptied first); returns the evidence digest.

    Raises:
        EvidenceError: The signing key cannot be read or is not an Ed25519 private key.
    """
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    spec_copy = None
    if inputs.release and Path(inputs.release).is_file():
        spec_copy = bundle / "inputs" / Path(inputs.release).name
        spec_copy.parent.mkdir()
        shutil.copyfile(inputs.release, spec_copy)
    results, found = _copy_results(inputs, bundle)
    if inputs.release and spec_copy is None:
        results.append({"kind": "release", "path": inputs.release, "reason": "release spec not found"})
    statement = build_statement(inputs, spec_copy, results, found)
    (bundle / STATEMENT).write_text(json.dumps(statement, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    digest = _write_manifest(bundle)
    if key_path:
        sign_digest(bundle, digest, Path(key_path))
    return digest


def sign_digest(bundle: Path, digest: str, key_path: Path) -> None:
    """Sign the evidence digest with the Ed25519 private key (PEM, unencrypted) at `key_path`."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ImportError as e:
        raise EvidenceError("signing evidence needs the `cryptography` package: pip install cryptography") from e
    except (OSError, ValueError, TypeError) as e:
        raise EvidenceError(f"signing key {key_path}: cannot read it ({e}); give an unencrypted PEM key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise EvidenceError(f"signing key {key_path}: not an Ed25519 key; create one with `llmrelease evidence keygen`")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = {
        "algorithm": "ed25519",
        "keyid": "sha256:" + hashlib.sha256(raw).hexdigest(),
        "signed": digest,
        "signature": base64.b64encode(key.sign(digest.encode())).decode(),
    }
    (bundle / SIGNATURE).write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8")


# ---- verification ----


class Verified(BaseModel):
    """The outcome of a successful `verify_bundle`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bundle: str
    digest: str
    files: int
    signature: str  # "valid (keyid ...)", "absent", or "present, not checked (no public key given)"


def _check_files(bundle: Path, manifest: dict[str, Any]) -> int:
    listed = {f["path"]: f for f in manifest.get("files", [])}
    for rel, entry in listed.items():
        path = bundle / rel
        if not path.is_file():
            raise EvidenceError(f"evidence bundle {bundle}: {rel} is missing (listed in {MANIFEST})")
        got = _sha256(path)
        if got != entry["sha256"]:
            raise EvidenceError(
                f"evidence bundle {bundle}: {rel} changed (sha256 {got[:16]}..., {MANIFEST} says "
                f"{entry['sha256'][:16]}...): the evidence was altered after it was written"
            )
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel not in listed and rel not in _OUTSIDE_MANIFEST:
            raise EvidenceError(f"evidence bundle {bundle}: {rel} is not in {MANIFEST}: it was added afterwards")
    return len(listed)


def _check_signature(bundle: Path, digest: str, public_key: Path | None) -> str:
    sig_path = bundle / SIGNATURE
    if not sig_path.is_file():
        if public_key is not None:
            raise EvidenceError(f"evidence bundle {bundle}: {SIGNATURE} is missing but a public key was given")
        return "absent"
    if public_key is None:
        return "present, not checked (no public key given)"
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        key = serialization.load_pem_public_key(public_key.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise TypeError("not an Ed25519 public key")
        key.verify(base64.b64decode(sig["signature"]), digest.encode())
    except (InvalidSignature, KeyError, ValueError, TypeError) as e:
        raise EvidenceError(
            f"evidence bundle {bundle}: {SIGNATURE} does not verify with {public_key} ({type(e).__name__})"
        ) from e
    return f"valid ({sig.get('keyid', '')[:23]}...)"


def verify_bundle(bundle: Path, *, expected_digest: str | None = None, public_key: Path | None = None) -> Verified:
    """Recompute every digest of the bundle; raise naming the first file that changed.

    Args:
        bundle: The bundle directory.
        expected_digest: The digest recorded elsewhere (the registry tag); must match when given.
        public_key: An Ed25519 public key (PEM); when given, the signature must exist and verify.

    Raises:
        EvidenceError: A file is missing, changed or added, the manifest or its digest changed, the digest is not
            the expected one, or the signature is missing or invalid.
    """
    if not (bundle / MANIFEST).is_file():
        raise EvidenceError(f"evidence bundle {bundle}: {MANIFEST} is missing: not an evidence bundle")
    text = (bundle / MANIFEST).read_bytes()
    digest = "sha256:" + hashlib.sha256(text).hexdigest()
    recorded = (bundle / DIGEST_FILE).read_text().strip() if (bundle / DIGEST_FILE).is_file() else ""
    if digest != recorded:
        raise EvidenceError(
            f"evidence bundle {bundle}: {MANIFEST} changed (its sha256 is not the one in {DIGEST_FILE})"
        )
    if expected_digest and digest != expected_digest:
        raise EvidenceError(
            f"evidence bundle {bundle}: {DIGEST_FILE} is {digest[:23]}... but the registry recorded "
            f"{expected_digest[:23]}...: the bundle was replaced"
        )
    files = _check_files(bundle, json.loads(text))
    signature = _check_signature(bundle, digest, public_key)
    return Verified(bundle=str(bundle), digest=digest, files=files, signature=signature)


# ---- the step ----


def evidence_root(environ: Mapping[str, str] | None = None) -> Path:
    """The local artifact store of evidence: `$LLMRELEASE_HOME/evidence`."""
    from steps.evals.tracking import llmrelease_home

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
    from steps.evals.tracking import experiment_id, llmrelease_home, mlflow_client

    client = mlflow_client()
    tags = {
        "llmrelease.model_name": inputs.model_name,
        "llmrelease.model_version": inputs.version,
        "llmrelease.workflow_uid": inputs.workflow_uid,
        "llmrelease.evidence.digest": digest,
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
            {"run_id": run.info.run_id, "digest": digest, "workflow_uid": inputs.workflow_uid, "path": str(bundle)}
        )
        ModelRegistry.from_env().tag_version(inputs.model_name, inputs.version, EVIDENCE_TAG, value)
    return str(run.info.run_id)


def run(inputs: Inputs, *, store: bool = True, key_path: str | None = None) -> Outputs:
    """Write the bundle and the HTML report into the local evidence store; log both to MLflow when `store`.

    Raises:
        EvidenceError: The signing key is unusable.
        RegistryError: MLflow refused or is unreachable (the bundle stays in the local store).
    """
    from steps.report import write_report

    uid = inputs.workflow_uid or f"local-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    bundle = evidence_root() / (inputs.model_name or "unknown") / (inputs.version or "unregistered") / uid
    digest = write_bundle(inputs, bundle, key_path=key_path if key_path is not None else os.environ.get(KEY_ENV))
    report = write_report(bundle)
    try:
        run_id = _store_in_mlflow(inputs, bundle, digest) if store else ""
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
    from steps.evals.tracking import mlflow_client

    if not (name and version):
        return "", []
    try:
        tags = dict(mlflow_client().get_model_version(name, version).tags or {})
    except Exception:  # noqa: BLE001 - evidence of a failed run must not need a registered version
        return "", []
    approvals = []
    for key, value in sorted(tags.items()):
        if key.startswith(APPROVAL_TAG_PREFIX):
            try:
                approvals.append({"environment": key.removeprefix(APPROVAL_TAG_PREFIX), **json.loads(value)})
            except (ValueError, TypeError):
                approvals.append({"environment": key.removeprefix(APPROVAL_TAG_PREFIX), "raw": value})
    return tags.get("llmrelease.digest", ""), approvals


def inputs_from_params(params: EvidenceParams) -> Inputs:
    """Typed inputs from the Argo string parameters (the registry gives the digest and approvals)."""
    from steps.register import resolve_git_commit

    digest, approvals = _version_facts(params.model_name, params.version)
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
    from steps.metrics import push, release_metrics

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
    except Exception as e:  # noqa: BLE001 - observability must never fail the evidence step
        print(f"evidence: metrics not pushed ({type(e).__name__}: {e})", file=sys.stderr)
    missing = statement["predicate"]["runDetails"]["llmrelease_results"]["missing"]
    print(f"evidence: {out.digest} for {inputs.model_name} v{inputs.version or '-'} in {out.bundle_path}")
    print(
        f"evidence: MLflow run {out.run_id}; report {out.report_path}; missing: "
        + (", ".join(str(m.get("kind")) for m in missing) or "none")
    )
    return EvidenceResult(digest=out.digest, report_path=out.report_path, bundle_path=out.bundle_path)
