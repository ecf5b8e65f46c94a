"""The onboard step: establish what a release's model is, check it, and write the onboarding record.

For a release spec and an environment: resolve `model.source` (a directory under the model root, s3://, or an
OpenAI-compatible provider), hash every file into a manifest and one digest, check the weights without running
them (safetensors only unless the policy allows pickle; headers and offsets checked; no custom code), read
config.json and estimate the GPU memory at the serving precision, check the model card and the platform policy,
validate the eval suites, and write `<work_dir>/onboarding-record.json` atomically, only once every check passed.
The record has no timestamps: the same inputs give the same bytes.

A release with a prompt has it validated against the weights it will be served with (variables, the policy's
prompt rules, its length in the model's tokens: `steps.onboarding.prompts`) before any upload, and the record
carries its content and digest. A prompt-only release (`model.source: champion`) keeps the champion's weights:
the champion version is resolved and its weights fetched and checked (`steps.onboarding.champion`), nothing is
uploaded, and the record names that version (`champion_version`) for the register step.

No `from __future__ import annotations` here: Hera's runner inspects the entry's annotations as classes.
"""

import hashlib
import os
from pathlib import Path
from typing import Annotated, ClassVar

from hera.workflows import Artifact, Output, Parameter, script
from pydantic import BaseModel, ConfigDict

from registry.errors import OnboardingError
from registry.integrity import Manifest, ManifestFile
from registry.retry import DEFAULT_DEADLINE_S, service_deadline
from registry.weights_store import Published, WeightsStore
from steps.core.artifacts import ONBOARD_DIR
from steps.core.entry import StepParams, in_pod, pod_env, run_step
from steps.core.images import STEPS_IMAGE
from steps.core.tracking import llmrelease_home, mlflow_client
from steps.evals.engines.probe import ProviderProbe, probe_provider
from steps.evals.store import eval_store
from steps.onboarding.champion import ChampionReader, ChampionWeights, champion_weights
from steps.onboarding.datasets import PassedChecks, check_datasets
from steps.onboarding.prompts import validate_prompt
from steps.onboarding.sources import S3Client, Source, model_roots, resolve_source
from steps.onboarding.weights import (
    check_weight_files,
    estimate_memory,
    read_config,
    safetensors_params,
    summarize_config,
)
from steps.release.policy import DEFAULT_POLICY_PATH, PlatformPolicy, check_policy, load_policy
from steps.release.records import (
    RECORD_FILE,
    ConfigSummary,
    MemoryEstimate,
    OnboardingRecord,
    PromptRecord,
    write_record,
)
from steps.release.source import RELEASE_REPO_IN, SOURCE_OUT, SPEC_OUT, checkout_spec, publish_spec
from steps.release.spec import ReleaseSpec, load_spec, resolve_spec_path

__all__ = ["Inputs", "OnboardParams", "OnboardResult", "Outputs", "describe", "onboard_step", "run"]

_CHECKS = "eval suites that passed validation"


class Inputs(BaseModel):
    """What the onboard step needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    release: str
    """The release spec: a path, or a bare name meaning releases/<name>.yaml (relative to the cwd)."""
    environment: str = "dev"
    """dev, stage or prod: selects the policy rules."""
    work_dir: Path
    """Where the record (and the S3 download cache) is written."""
    root: Path = Path(".")
    """The model root: relative model.source and suite paths resolve under it and may not escape it."""
    policy_path: str = DEFAULT_POLICY_PATH
    """The platform policy file."""
    spec_root: Path | None = None
    """The release repository's checkout `release` is read in (None: the cwd)."""


class Outputs(BaseModel):
    """What the onboard step publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_path: Path
    digest: str
    record: OnboardingRecord
    approval_required: bool = False
    """The environment is one of the spec's `rollout.approval_required_in`: a person approves the rollout."""
    published: Published | None = None
    """Weights only: where they are in the weights store, and the files this run uploaded (none: reused)."""


def run(
    inputs: Inputs,
    s3: S3Client | None = None,
    probe: ProviderProbe | None = probe_provider,
    store: WeightsStore | None = None,
    client: ChampionReader | None = None,
    passed: PassedChecks | None = None,
) -> Outputs:
    """Onboard the model of `inputs.release` for `inputs.environment`.

    Args:
        inputs: The step's inputs.
        s3: A boto3 S3 client for s3:// sources; built from the environment (AWS_ENDPOINT_URL, ...) when None.
        store: The weights store the weights are uploaded to; `WeightsStore.from_env` (S3 bucket or local) if None.
        probe: Asks a provider source for a one-token completion before anything is recorded
            (`steps.evals.engines.probe`); None skips it (tests of the record alone).
        client: An MLflow client: a prompt-only release (`model.source: champion`) reads the champion's version
            and weights through it; built from MLFLOW_TRACKING_URI when None and needed.
        passed: The eval suites that passed validation before (`check_datasets`); when None, the platform's
            store: `s3://$LLMRELEASE_S3_BUCKET/evals/datasets`, else `$LLMRELEASE_HOME/dataset-checks`.

    Returns:
        The record's path, the model digest and the record.

    Raises:
        SpecError: The spec or the policy file is malformed, or the environment unknown.
        PolicyError: The policy refuses the licence, the name, the provider or pickle weights.
        OnboardingError: The source, the weights, config.json, the fit on the GPU or an eval suite failed.
    """
    spec_path = resolve_spec_path(inputs.release)
    spec_file = inputs.spec_root / spec_path if inputs.spec_root is not None else spec_path
    spec = load_spec(str(spec_file))
    policy = load_policy(inputs.policy_path)
    rules = policy.environment(inputs.environment)
    _check_card(spec)
    check_policy(policy, inputs.environment, license=spec.model.card.license, model_name=spec.model.name)
    root, work_dir = inputs.root, inputs.work_dir
    passed = passed or eval_store("datasets", llmrelease_home() / "dataset-checks", _CHECKS)
    datasets = check_datasets(spec.evals, root, passed)
    roots = model_roots(root, rules.model_roots)
    champion = _champion(spec, client, work_dir) if spec.prompt_only else None
    source = (
        champion.source
        if champion is not None
        else resolve_source(spec.model.source, root=root, work_dir=work_dir, s3=s3, roots=roots)
    )
    if source.provider_key is not None:
        check_policy(
            policy,
            inputs.environment,
            license=spec.model.card.license,
            model_name=spec.model.name,
            provider=source.provider_key,
        )
        if probe is not None and source.provider is not None:
            probe(source.provider, service_deadline(default=rules.service_deadline_s or DEFAULT_DEADLINE_S))
    config, memory, published = None, None, None
    if source.kind == "weights":
        config, memory = _check_weights(source, spec, policy, inputs.environment, rules.allow_pickle)
    prompt = _prompt(spec, inputs, source, policy)  # a bad prompt stops the release before any upload
    if source.kind == "weights" and champion is None:
        published = _publish(source, store or WeightsStore.from_env(s3=s3))  # type: ignore[arg-type]
    record = OnboardingRecord(
        name=spec.model.name,
        release=spec.name,
        environment=inputs.environment,
        source_uri=spec.model.source,
        kind=source.kind,
        weights_uri=published.uri if published is not None else (source.uri if champion is not None else None),
        provider=source.provider,
        digest=source.digest,
        files=source.files,
        card=spec.model.card,
        config=config,
        memory=memory,
        datasets=datasets,
        spec_path=str(spec_path),
        spec_sha256=hashlib.sha256(spec_file.read_bytes()).hexdigest(),
        policy_version=policy.version,
        prompt=prompt,
        champion_version=champion.version if champion is not None else None,
    )
    path = write_record(record, work_dir)
    required = inputs.environment in spec.rollout.approval_required_in
    return Outputs(
        record_path=path, digest=record.digest, record=record, approval_required=required, published=published
    )


def _champion(spec: ReleaseSpec, client: ChampionReader | None, work_dir: Path) -> ChampionWeights:
    """A prompt-only release: the champion version and its weights (fetched into LLMRELEASE_HOME's cache)."""
    if client is None:
        client = mlflow_client(os.environ)
    from steps.evals.weights import download_weights

    return champion_weights(client, spec.model.name, llmrelease_home(), download_weights)


def _prompt(spec: ReleaseSpec, inputs: Inputs, source: Source, policy: PlatformPolicy) -> PromptRecord | None:
    """The release's prompt, validated against the weights it will be served with; None without one."""
    if spec.prompt is None:
        return None
    if source.local_dir is None:
        raise OnboardingError(
            f"prompt {spec.prompt.name!r}: model.source {spec.model.source!r} is a provider model, whose tokenizer "
            "the platform cannot read: release prompts with weights (or model.source: champion)"
        )
    checked = validate_prompt(
        spec.prompt,
        repo_root=inputs.spec_root or Path("."),
        weights_dir=source.local_dir,
        policy=policy,
        environment=inputs.environment,
        max_context=spec.model.serving.max_context,
    )
    return PromptRecord(
        name=checked.content.name,
        digest=checked.digest,
        content=checked.content,
        tokens=checked.tokens,
        context_length=checked.context_length,
    )


def _check_card(spec: ReleaseSpec) -> None:
    card = spec.model.card
    if not card.license.strip():
        raise OnboardingError("model.card.license is empty; add the SPDX licence id, e.g. apache-2.0")
    if not card.intended_use.strip():
        raise OnboardingError("model.card.intended_use is empty; say in one sentence what the model is for")


def _check_weights(
    source: Source, spec: ReleaseSpec, policy: PlatformPolicy, environment: str, allow_pickle: bool
) -> tuple[ConfigSummary, MemoryEstimate]:
    """Check the weight files and config.json; estimate the memory and refuse a model that does not fit."""
    if source.local_dir is None:
        raise OnboardingError(f"model.source {source.uri!r}: weights without a local directory; report this bug")
    tensors = check_weight_files(
        source.files, allow_pickle=allow_pickle, pickle_rule=policy.rule(environment, "allow_pickle")
    )
    params = sum(safetensors_params(source.local_dir / rel, rel) for rel in tensors)
    summary = summarize_config(read_config(source.local_dir), params)
    memory = estimate_memory(summary, spec.model.serving)
    if not memory.fits:
        raise OnboardingError(
            f"model.serving: {spec.model.name} does not fit the target GPU: {memory.arithmetic}; fix: quantize "
            "(model.serving.quantization), lower max_context/max_batch, or pick a larger target_gpu"
        )
    return summary, memory


def _publish(source: Source, store: WeightsStore) -> Published:
    """Upload the checked weights to their digest-addressed location (nothing when already there)."""
    if source.local_dir is None:
        raise OnboardingError(f"model.source {source.uri!r}: weights without a local directory; report this bug")
    files = [ManifestFile(path=f.path, sha256=f.sha256, size=f.size) for f in source.files]
    return store.publish(source.local_dir, Manifest(digest=source.digest, files=files))


def describe(outputs: Outputs) -> str:
    """The one human line the step prints, e.g. `onboarded demo-qa (sha256:ab12..., 9 files, ...)`."""
    rec = outputs.record
    if rec.memory is None:
        what = f"provider {rec.provider.model if rec.provider else '?'}"
    else:
        need, usable = rec.memory.total_bytes / 1024**3, rec.memory.usable_bytes / 1024**3
        what = f"{len(rec.files)} files, needs {need:.2f} GiB of {usable:.2f} GiB usable"
    if outputs.published is not None:
        how = "already there" if not outputs.published.uploaded else f"{len(outputs.published.uploaded)} uploaded"
        what += f", in {outputs.published.uri} ({how})"
    if rec.champion_version is not None:
        what += f", the champion's weights (version {rec.champion_version})"
    if rec.prompt is not None:
        what += f", prompt {rec.prompt.name} {rec.prompt.digest[:19]}... ({rec.prompt.tokens} tokens)"
    return f"onboarded {rec.name} for {rec.environment} ({rec.digest[:19]}..., {what}): {outputs.record_path}"


class OnboardParams(StepParams):
    """Argo input parameters of the onboard template."""

    step: ClassVar[str] = "onboard"

    release: str
    """The spec's path in the release repository (releases/<name>.yaml)."""
    environment: str = ""
    """dev, stage or prod; "" means the spec's `environment` (else dev)."""
    work_dir: Path
    git_repo: str = ""
    """The release repository as the run was given it (recorded with the spec)."""
    git_commit: str = ""
    """The commit asked for ("" the branch head); the one checked out is what the step outputs."""


class OnboardResult(Output):
    """Argo output parameters of the onboard template."""

    record_path: Annotated[str, Parameter(name="record-path")]
    digest: Annotated[str, Parameter(name="digest")]
    approval_required: Annotated[bool, Parameter(name="approval-required")]  # true/false
    environment: Annotated[str, Parameter(name="environment")]  # the one delivered to (the spec's when not given)
    git_commit: Annotated[str, Parameter(name="git-commit")]  # the commit checked out: what was evaluated


@script(
    constructor="runner",
    image=STEPS_IMAGE,
    name="onboard",
    env=pod_env(),
    inputs=[Artifact(name="release-repo", path=RELEASE_REPO_IN)],  # the pipeline gives it a `git` source
    outputs=[
        Artifact(name="record", path=f"{ONBOARD_DIR}/{RECORD_FILE}"),
        Artifact(name="spec", path=SPEC_OUT, global_name="release-spec"),
        Artifact(name="spec-source", path=SOURCE_OUT, global_name="spec-source"),
    ],
)
def onboard_step(params: OnboardParams) -> OnboardResult:
    """Onboard the release's model from the spec in the release repository at the commit (see the module docs)."""
    checkout = in_pod(RELEASE_REPO_IN)
    spec_file, _, source = run_step(
        "onboard",
        lambda: checkout_spec(
            checkout,
            params.release,
            repository=params.git_repo,
            requested=params.git_commit,
            environment=params.environment,
        ),
        timed=False,
    )
    inputs = Inputs(release=source.path, environment=source.environment, work_dir=params.work_dir, spec_root=checkout)
    outputs = run_step("onboard", lambda: run(inputs))
    run_step("onboard", lambda: publish_spec(spec_file, source, params.work_dir), timed=False)
    print(f"{describe(outputs)} (spec {source.path} at {source.commit[:12]}, environment {source.environment})")
    return OnboardResult(
        record_path=str(outputs.record_path),
        digest=outputs.digest,
        approval_required=outputs.approval_required,
        environment=source.environment,
        git_commit=source.commit,
    )
