"""Every name llmrelease writes into MLflow: aliases, version tags, tag prefixes, experiments, and the approval.

One module on purpose: a tag is read by one step and written by another (often in another pod), so its name
must exist exactly once. Import the constant; never write the string again.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

__all__ = [
    "APPROVAL_TAG_PREFIX",
    "CANARY_DECISION_TAG",
    "CANARY_TAG",
    "CANDIDATE",
    "CHAMPION",
    "DIGEST_TAG",
    "ENVIRONMENT_TAG",
    "EVAL_EXPERIMENT",
    "EVAL_KIND_TAG",
    "EVIDENCE_DIGEST_TAG",
    "EVIDENCE_EXPERIMENT",
    "EVIDENCE_TAG",
    "GATE_EXPERIMENT",
    "GATE_TAG",
    "GIT_COMMIT_TAG",
    "HISTORY_TAG_PREFIX",
    "LEASE_TAG",
    "LICENSE_TAG",
    "MODEL_NAME_TAG",
    "MODEL_PROMPT_TAG",
    "MODEL_VERSION_TAG",
    "NIGHTLY_EXPERIMENT",
    "NIGHTLY_VERDICT_TAG",
    "ONBOARDING_EXPERIMENT",
    "OWNER_TAG",
    "PREVIOUS",
    "PROMPT_MODEL_TAG",
    "PROMPT_VARIABLES_TAG",
    "REJECTED_TAG",
    "ROLLED_BACK_TAG",
    "RUN_COMPLETE_TAG",
    "SOURCE_URI_TAG",
    "SPEC_REPOSITORY_TAG",
    "WORKFLOW_NAME_TAG",
    "WORKFLOW_UID_TAG",
    "Approval",
    "approval_tag",
    "approvals_from_tags",
]

# ---- aliases ------------------------------------------------------------------------------------------------
CHAMPION = "champion"  # serves production traffic
PREVIOUS = "previous"  # the champion before the last promotion: the rollback target
CANDIDATE = "candidate"  # the version a release in flight evaluates

# ---- version tags -------------------------------------------------------------------------------------------
DIGEST_TAG = "llmrelease.digest"  # sha256 model digest of the onboarding manifest
SOURCE_URI_TAG = "llmrelease.source_uri"
LICENSE_TAG = "llmrelease.license"
OWNER_TAG = "llmrelease.owner"  # a registered-model tag
GIT_COMMIT_TAG = "llmrelease.git_commit"
SPEC_REPOSITORY_TAG = "llmrelease.spec.repository"  # the releases repository the spec was read from, at GIT_COMMIT_TAG
WORKFLOW_NAME_TAG = "llmrelease.workflow_name"
WORKFLOW_UID_TAG = "llmrelease.workflow_uid"
ENVIRONMENT_TAG = "llmrelease.environment"
GATE_TAG = "llmrelease.gate"  # pass | fail
REJECTED_TAG = "llmrelease.rejected"  # why the release was stopped
MODEL_PROMPT_TAG = "llmrelease.prompt"  # a registered-model tag: the prompt its served versions apply (register)
LEASE_TAG = "llmrelease.rollout"  # the rollout lease (a registered-model tag): which release holds the model
CANARY_TAG = "llmrelease.canary"  # completed | aborted: ...
CANARY_DECISION_TAG = "llmrelease.canary.decision"  # a person's resume/abort of a paused canary
ROLLED_BACK_TAG = "llmrelease.rolled_back"
EVIDENCE_TAG = "llmrelease.evidence"
EVIDENCE_DIGEST_TAG = "llmrelease.evidence.digest"
NIGHTLY_VERDICT_TAG = "llmrelease.nightly.verdict"
APPROVAL_TAG_PREFIX = "llmrelease.approval."  # + environment: an `Approval` as JSON
HISTORY_TAG_PREFIX = "llmrelease.history."  # + sequence: one alias move (registry.history)

# ---- prompt version tags (MLflow Prompt Registry; DIGEST_TAG, GIT_COMMIT_TAG, ... and the aliases apply too) ----
PROMPT_VARIABLES_TAG = "llmrelease.prompt.variables"  # JSON {name: default or null}: the declared variables
PROMPT_MODEL_TAG = "llmrelease.prompt.model"  # the registered model the prompt was released for

# ---- run tags (MLflow tracking runs) ------------------------------------------------------------------------
MODEL_NAME_TAG = "llmrelease.model_name"
MODEL_VERSION_TAG = "llmrelease.model_version"
EVAL_KIND_TAG = "llmrelease.eval_kind"  # quality | safety
RUN_COMPLETE_TAG = "llmrelease.run_complete"

# ---- experiments --------------------------------------------------------------------------------------------
ONBOARDING_EXPERIMENT = "llmrelease-onboarding"
EVAL_EXPERIMENT = "llmrelease-evals"
GATE_EXPERIMENT = "llmrelease-gates"
NIGHTLY_EXPERIMENT = "llmrelease-nightly"
EVIDENCE_EXPERIMENT = "llmrelease-evidence"


class Approval(BaseModel):
    """One recorded approval: the JSON value of the version tag `llmrelease.approval.<environment>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approver: str
    approved_at: datetime
    environment: str
    workflow_uid: str = ""


def approval_tag(environment: str) -> str:
    """The version tag key holding the approval for `environment`."""
    return f"{APPROVAL_TAG_PREFIX}{environment}"


def approvals_from_tags(tags: dict[str, str]) -> dict[str, Approval]:
    """The approvals among a version's tags, by environment (tags that do not parse are skipped)."""
    found: dict[str, Approval] = {}
    for key, value in tags.items():
        if key.startswith(APPROVAL_TAG_PREFIX):
            try:
                found[key.removeprefix(APPROVAL_TAG_PREFIX)] = Approval.model_validate_json(value)
            except ValueError:
                continue
    return found
