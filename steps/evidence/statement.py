"""The in-toto Statement v1 / SLSA Provenance v1 of a release run: what it records, result kinds and summaries."""

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from steps.core.hashing import sha256_file
from steps.core.images import EVAL_GPU_IMAGE, STEPS_IMAGE
from steps.evals.results import EvalReport
from steps.evidence.layout import EXPECTED_KINDS

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Inputs",
    "build_statement",
    "classify",
    "load_result",
    "summarize_results",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://llmrelease.dev/buildtypes/golden-delivery/v1"
BUILDER_ID = "https://llmrelease.dev/builders/argo-workflows/v1"


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


def load_result(path: Path) -> tuple[str, Any]:
    """The kind and parsed JSON of a result file; ("other", None) when it is not readable JSON."""
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
    prompt: dict[str, Any] | None = None  # a release with a prompt: `steps.evidence.prompt.prompt_evidence`


def _descriptor(name: str, path: Path, uri: str) -> dict[str, Any]:
    return {"name": name, "uri": uri, "digest": {"sha256": sha256_file(path)[0]}}


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


def _approval(inputs: Inputs) -> dict[str, Any] | None:
    """The approval of this run's approver (any approval when none is named), else a bare record of the approver."""
    approval = next((a for a in inputs.approvals if not inputs.approver or a.get("approver") == inputs.approver), None)
    return approval or ({"approver": inputs.approver, "approved_at": None} if inputs.approver else None)


def _missing(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reports that were asked for but not found, then each expected kind this run did not produce."""
    present = {r["kind"] for r in results if "digest" in r}
    covered = present | {r["kind"] for r in results} | ({"quality", "safety"} if "eval" in present else set())
    return [r for r in results if "digest" not in r] + [
        {"kind": k, "reason": "not produced by this run"} for k in EXPECTED_KINDS if k not in covered
    ]


def _run_details(inputs: Inputs, results: list[dict[str, Any]], found: Mapping[str, Any]) -> dict[str, Any]:
    return {
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
            "approval": _approval(inputs),
            "missing": _missing(results),
        },
    }


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
        release["digest"] = {"sha256": sha256_file(spec_copy)[0]}
    digest = inputs.model_digest.removeprefix("sha256:")
    subject = {
        "name": inputs.model_name,
        "digest": {"sha256": digest} if digest else {},
        "annotations": {"version": inputs.version},
    }
    prompt = inputs.prompt
    subjects = [subject] + (
        [
            {
                "name": f"prompt:{prompt['name']}",
                "digest": {"sha256": str(prompt["digest"]).removeprefix("sha256:")},
                "annotations": {"version": prompt["version"], "uri": prompt["uri"]},
            }
        ]
        if prompt
        else []
    )
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "release": release,
                    "gitCommit": inputs.git_commit,
                    **({"prompt": prompt} if prompt else {}),
                    "workflow": {
                        "name": inputs.workflow_name,
                        "uid": inputs.workflow_uid,
                        "parameters": inputs.workflow_parameters,
                    },
                },
                "resolvedDependencies": _dependencies(inputs, found, spec if isinstance(spec, dict) else None),
            },
            "runDetails": _run_details(inputs, results, found),
        },
    }
