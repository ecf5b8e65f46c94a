"""Rollout operations on the cluster plane (vLLM behind Argo Rollouts) and the registry: the steps' cluster path.

The counterparts of `steps.rollout.operations` where the environment's policy sets `plane: kubernetes`
(`steps.rollout.serving.factory.rollout_plane`), with the same registry invariants: `deploy` takes the model's
rollout lease, every later step checks it, promote / abort / rollback release it; `champion` and `previous` move
through `registry.promote` and, on rollback, the same alias moves as `operations` makes. The Argo Rollouts
controller moves the traffic and runs the analysis; these functions write the Rollout and read its status:

- deploy: the version's pod template into the model's Rollout (`RolloutPlane.deploy`): weights from the version's
  digest-addressed `s3://` weights-store URI (its `files/` prefix, which the initContainer copies), the vLLM image
  `vllm_image()`, the spec's `serving.max_context`, and the release's prompt (or the model's champion prompt) as
  SERVED_PROMPT, which the initContainer applies to the weights (a prompt-only release is a new pod template on the
  same weights: a canary like any other). The controller starts the canary steps as soon as the new
  template is written (the first `setWeight` included). URLs: the candidate is the canary Service
  (`http://<model>-canary.<ns>.svc:8000/v1`), the champion the stable one, and the router the model's HTTPRoute
  host on the Gateway (`http://<model>.models.llmrelease.internal/v1`, the hostname the rendered HTTPRoute sets):
  what clients call, whichever version the controller sends them to.
- canary: follow the Rollout to Healthy (completed) or Degraded (aborted: the controller's message and the
  AnalysisRuns in Error are the reason; the version is tagged and the lease released); Paused on an Inconclusive
  analysis waits for `llmrelease rollout promote|abort` or `pause_timeout_s` (then aborts). The AnalysisRuns'
  measurements become the canary log's steps (one per run: the weight of the step before it, its worst phase).
- promote: the Rollout must be Healthy with the candidate stable; then the registry promotion.
- abort (the exit handler): `RolloutPlane.abort` (all traffic on stable), or `undo` when the canary already
  finished (the candidate is stable but was never promoted): the champion's template back.
- rollback: `RolloutPlane.undo` when the Rollout serves the champion with the registry's `previous` as its previous
  revision (a traffic switch within keep_previous_hot_s), waits until it is Healthy, then moves the aliases.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.tags import CANARY_TAG, CHAMPION, LEASE_TAG, PREVIOUS, ROLLED_BACK_TAG
from steps.rollout.operations import Deployment, RolloutError, _acquire, current_lease, require_lease
from steps.rollout.served import PromptsFactory, release_target
from steps.rollout.serving.base import ServedPrompt, ServingError
from steps.rollout.serving.cluster import Outcome, RolloutPlane, RolloutStatus, describe
from steps.rollout.serving.rollouts import STAGE_STEPS, ServedVersion, render_rollout

if TYPE_CHECKING:
    from registry.facade import ModelRegistry
    from steps.evals.weights import VersionReader

__all__ = ["VLLM_IMAGE", "VLLM_IMAGE_ENV", "abort", "canary", "deploy", "promote", "rollback", "served_version"]

VLLM_IMAGE_ENV = "LLMRELEASE_VLLM_IMAGE"
VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"  # pinned; $LLMRELEASE_VLLM_IMAGE overrides it (a digest in production)
DEPLOY_TIMEOUT_S = 1800.0  # pulling a vLLM image and loading weights onto a GPU can take many minutes
_RUN_STEP = re.compile(r"-(\d+)$")  # AnalysisRun names end with the index of their canary step
_SEVERITY = {"Successful": 0, "Inconclusive": 1, "Failed": 2, "Error": 3}


def served_version(
    versions: VersionReader,
    model: str,
    version: str,
    home: Path,
    *,
    max_model_len: int | None = None,
    prompt: ServedPrompt | None = None,
) -> ServedVersion:
    """What the Rollout's pods serve for `version`: its weights on S3, the vLLM image, one GPU, the prompt.

    The prompt is applied to the weights by the pod's initContainer (`steps.rollout.serving.prompted.apply_in_place`).

    Raises:
        RolloutError: The version's weights are not in an S3 weights store (the pods cannot fetch them).
        IntegrityError: Its source names another digest than its digest tag.
    """
    from registry.weights_store import is_weights_uri
    from steps.evals.weights import model_version
    from steps.rollout.serving.weights import weights_location

    source = str(model_version(versions, model, version, None).source)
    if not (source.startswith("s3://") and is_weights_uri(source)):
        raise RolloutError(
            f"version {version} of {model}: its weights {source} are not in an S3 weights store, which the "
            "cluster's pods read: onboard and register it with LLMRELEASE_S3_BUCKET set"
        )
    location = str(weights_location(versions, model, version, home))  # checks the URI against the digest tag
    image = os.environ.get(VLLM_IMAGE_ENV, "").strip() or VLLM_IMAGE
    served_prompt = prompt.model_dump_json() if prompt is not None else ""
    return ServedVersion(
        version, f"{location.rstrip('/')}/files", image, max_model_len=max_model_len, prompt=served_prompt
    )


def deploy(
    registry: ModelRegistry,
    versions: VersionReader,
    plane: RolloutPlane,
    home: Path,
    *,
    spec: Any,
    candidate: str,
    workflow_uid: str,
    environment: str,
    poll_s: float = 5.0,
    prompts: PromptsFactory | None = None,
) -> Deployment:
    """Take the rollout lease, write the candidate's pod template into the model's Rollout, wait until it is staged.

    Staged: its pods serve at weight 0, the Rollout paused at its staging step (`rollouts.STAGE_STEPS`) until the
    canary step promotes past it; a first deploy (no stable version yet) becomes stable at once instead.
    """
    model, ns = spec.model.name, plane.options.namespace
    _acquire(registry, model, candidate, workflow_uid, environment)
    champion = registry.get_alias(model, CHAMPION)
    champion = None if champion == candidate else champion
    prompt = spec.prompt.name if spec.prompt is not None else None  # else the model's prompt, if it has one
    target = release_target(registry, prompts or _prompt_registry, model, candidate, prompt)
    served = served_version(
        versions, model, candidate, home, max_model_len=spec.model.serving.max_context, prompt=target.prompt
    )
    for line in plane.deploy(model, served, spec.rollout):
        print(f"deploy: {line}", flush=True)
    echo = lambda line: print(f"deploy: {line}", flush=True)  # noqa: E731
    plane.wait_staged(model, timeout_s=DEPLOY_TIMEOUT_S, poll_s=poll_s, echo=echo)  # weight 0 until the canary step
    route = next(d for d in render_rollout(model, served, spec.rollout, plane.options) if d["kind"] == "HTTPRoute")
    return Deployment(
        model=model,
        candidate=candidate,
        champion=champion,
        candidate_url=f"http://{model}-canary.{ns}.svc:8000/v1",
        champion_url=f"http://{model}-stable.{ns}.svc:8000/v1" if champion else None,
        router_url=f"http://{route['spec']['hostnames'][0]}/v1",
    )


def _prompt_registry() -> Any:
    from registry.prompts import PromptRegistry

    return PromptRegistry.from_env()


def _release(registry: ModelRegistry, model: str, workflow_uid: str | None, version: str, outcome: str) -> None:
    """Tag `version` with the canary's outcome and drop the lease when `workflow_uid` (None: anyone) holds it."""
    lease = current_lease(registry, model)
    if lease is not None and (workflow_uid is None or lease.workflow_uid == workflow_uid):
        registry.delete_model_tag(model, LEASE_TAG)
    registry.tag_version(model, version, CANARY_TAG, outcome[:5000])


def _await_human(
    plane: RolloutPlane, model: str, timeout_s: float, sleep: Callable[[float], None], clock: Callable[[], float]
) -> dict[str, Any]:
    """Poll a Rollout paused on Inconclusive until a human promotes or aborts it, or `timeout_s` passes (abort)."""
    print(
        f"canary: Inconclusive: paused; go on with `llmrelease rollout promote {model} --env <env>` or stop with "
        f"`llmrelease rollout abort {model} --env <env>`",
        flush=True,
    )
    deadline = clock() + timeout_s
    while (status := plane.status(model)).settled == "Paused":
        if clock() >= deadline:
            plane.abort(model)
            return {"action": "abort", "actor": f"pause timeout ({timeout_s:g}s)", "at": _now()}
        sleep(min(5.0, timeout_s))
    action = "abort" if status.aborted else "resume"
    return {"action": action, "actor": "a human (llmrelease rollout promote|abort)", "at": _now()}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _steps(outcome: Outcome, weights: list[int]) -> list[dict[str, Any]]:
    """One log step per AnalysisRun: the weight of the canary step before it, its measurements, its worst phase."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for m in outcome.measurements:
        entry = {"run": m.run, "metric": m.metric, "phase": m.phase, "value": m.value, "message": m.message}
        runs.setdefault(m.run, []).append({**entry, "at": m.finished_at or m.started_at, "started_at": m.started_at})
    steps: list[dict[str, Any]] = []
    for run, measured in runs.items():
        index = _RUN_STEP.search(run)
        position = (int(index.group(1)) - len(STAGE_STEPS) - 1) // 2 if index else -1
        weight = weights[position] if 0 <= position < len(weights) else outcome.status.canary_weight
        worst = max((m["phase"] for m in measured), key=lambda p: _SEVERITY.get(p, 1))
        started = min((m["started_at"] for m in measured if m["started_at"]), default=None)
        steps.append({"weight": weight, "run": run, "started_at": started, "phase": worst, "measurements": measured})
    return sorted(steps, key=lambda s: (s["started_at"] or "", s["weight"]))


def canary(
    registry: ModelRegistry,
    plane: RolloutPlane,
    *,
    spec: Any,
    workflow_uid: str,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Follow the Rollout's canary to its end; returns the canary log (outcome completed or aborted).

    Raises:
        RolloutError: This workflow no longer holds the lease.
        ServingError: The Rollout did not settle in time (the exit handler then aborts it), or the API refused.
    """
    model, rollout = spec.model.name, spec.rollout
    lease = require_lease(registry, model, workflow_uid)
    champion = registry.get_alias(model, CHAMPION)
    champion = None if champion == lease.candidate else champion
    log: dict[str, Any] = {
        "model_name": model, "candidate": lease.candidate, "champion": champion,
        "router": "gateway", "plane": "kubernetes", "outcome": "completed", "steps": [], "decisions": [],
        "aborted_at": None, "abort_reason": None,
    }  # fmt: skip
    if plane.status(model).staged:  # the candidate waited at weight 0 through latency and approval
        print(f"canary: {plane.promote(model)} past the staging pause", flush=True)
    budget = 1800.0 + len(rollout.steps) * (rollout.analysis.count * rollout.analysis.interval_s + 300.0)
    while True:
        require_lease(registry, model, workflow_uid)  # a manual rollback stops us here
        outcome = plane.follow(model, timeout_s=budget, poll_s=poll_s, echo=lambda line: print(line, flush=True))
        if outcome.settled != "Paused":
            break
        log["decisions"].append(_await_human(plane, model, rollout.analysis.pause_timeout_s, sleep, clock))
    log.update(steps=_steps(outcome, list(rollout.steps)), rollout=describe(outcome.status), errors=outcome.run_errors)
    if outcome.settled == "Degraded":
        reason = "; ".join([outcome.status.message or "the Rollout was aborted", *outcome.run_errors])
        _release(registry, model, workflow_uid, lease.candidate, f"aborted: {reason}")
        log.update(outcome="aborted", aborted_at=_now(), abort_reason=reason)
    return log


def promote(
    registry: ModelRegistry, plane: RolloutPlane, *, model: str, workflow_uid: str, actor: str, reason: str
) -> list[Any]:
    """Make the candidate champion once the Rollout is Healthy with it stable; release the lease."""
    candidate = require_lease(registry, model, workflow_uid).candidate
    status = plane.status(model)
    if status.settled != "Healthy" or status.version != candidate:
        raise RolloutError(
            f"version {candidate} of {model} is not the Rollout's stable version ({describe(status)}): finish the "
            f"canary first (`llmrelease rollout get {model} --env <env> --watch`)"
        )
    moves = registry.promote(model, candidate, actor=actor, reason=reason, workflow_uid=workflow_uid)
    _release(registry, model, workflow_uid, candidate, "completed")
    return list(moves)


def _live(plane: RolloutPlane, model: str) -> RolloutStatus | None:
    """The Rollout's status; None when there is no Rollout (a deploy that failed before creating it)."""
    try:
        return plane.status(model)
    except ServingError as e:
        if "does not exist" in str(e):  # RolloutPlane's own refusal; API errors propagate
            return None
        raise


def _back_to_champion(plane: RolloutPlane, model: str, status: RolloutStatus, champion: str | None) -> None:
    """A canary in flight: abort it (all traffic on stable); one that finished unpromoted: `undo` to the champion.

    A first release (no champion) that finished has nothing to go back to: it keeps serving, without the alias.
    """
    if status.settled != "Healthy":
        print(plane.abort(model), flush=True)
        return
    previous = plane.previous(model)
    if champion is not None and previous is not None and previous.version == champion:
        print(plane.undo(model), flush=True)
    else:
        print(f"abort: Rollout of {model} finished on {status.version}; no champion revision to go back to", flush=True)


def abort(
    registry: ModelRegistry, plane: RolloutPlane, *, model: str, workflow_uid: str | None, reason: str
) -> str | None:
    """All traffic back on the champion, the lease released, the version tagged; returns the aborted version.

    With `workflow_uid`, only that workflow's rollout is aborted (the exit handler); None aborts any.
    """
    lease = current_lease(registry, model)
    if lease is None or (workflow_uid is not None and lease.workflow_uid != workflow_uid):
        return None
    status = _live(plane, model)
    if status is not None and status.version == lease.candidate:
        _back_to_champion(plane, model, status, registry.get_alias(model, CHAMPION))
    _release(registry, model, None, lease.candidate, f"aborted: {reason}")
    return lease.candidate


def rollback(
    registry: ModelRegistry,
    plane: RolloutPlane,
    model: str,
    *,
    actor: str,
    reason: str,
    workflow_uid: str = "",
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """`undo` the Rollout to `previous`, wait until it is Healthy there, then move `champion` back and tag.

    Returns:
        {"from", "to", "switched_s" (seconds until the Rollout was Healthy on `to`), "fast": True}.

    Raises:
        RolloutError: No `previous` in the registry, or the Rollout's previous revision is another version.
    """
    started = time.perf_counter()
    target, champion = registry.rollback_target(model), registry.get_alias(model, CHAMPION)
    if target is None:
        raise RolloutError(
            f"nothing to roll back to: {model} has no 'previous' version (champion is {champion or 'unset'}); "
            f"promote a known-good version instead: llmrelease registry promote {model} <version> --actor <you>"
        )
    status, previous = plane.status(model), plane.previous(model)
    if status.version != target:
        if status.version != champion or previous is None or previous.version != target:
            raise RolloutError(
                f"Rollout of {model} serves version {status.version} with previous revision "
                f"{previous.version if previous else 'none'}, so undo cannot reach {target} (champion {champion}): "
                f"abort any canary (`llmrelease rollout abort {model} --env <env>`), or release version {target} again"
            )
        print(plane.undo(model), flush=True)
        outcome = plane.follow(model, timeout_s=timeout_s, echo=lambda line: print(line, flush=True))
        if outcome.settled != "Healthy" or outcome.status.version != target:
            raise RolloutError(
                f"Rollout of {model} did not settle on version {target} after undo ({describe(outcome.status)}): "
                f"see `llmrelease rollout get {model} --env <env>`; the registry was not changed"
            )
    switched_s = time.perf_counter() - started
    who = {"actor": actor, "reason": reason, "workflow_uid": workflow_uid}
    registry.delete_model_tag(model, LEASE_TAG)  # any canary in flight is over
    if champion is not None and champion != target:
        registry.move_alias(model, CHAMPION, target, **who)
        registry.tag_version(model, champion, ROLLED_BACK_TAG, json.dumps({**who, "at": _now()}))
    registry.remove_alias(model, PREVIOUS, **{**who, "reason": f"rolled back to it: {reason}"})
    return {"from": champion, "to": target, "switched_s": switched_s, "fast": True}
