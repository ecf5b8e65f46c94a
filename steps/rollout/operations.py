"""Rollout operations on a serving plane and the registry: deploy, promote, abort and rollback.

The steps (deploy, canary, promote, rollback, the exit handler's cleanup) and `llmrelease rollback` call these.
Two invariants hold after every operation, whatever failed on the way:

* traffic is never split unless a canary is running: an abort puts 100% back on the champion *before* anything
  else, and a rollback puts 100% on `previous` before it touches the registry;
* one rollout per model at a time: `deploy` takes a lease (the registered-model tag `llmrelease.rollout`, also
  what `llmrelease status` shows); a second workflow is refused, not interleaved, and every later step checks
  that its workflow still holds the lease (a `llmrelease rollback` in the middle takes it away).
"""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from registry.errors import ReleaseError
from registry.tags import CANARY_DECISION_TAG, CANARY_TAG, CHAMPION, LEASE_TAG, PREVIOUS, ROLLED_BACK_TAG
from steps.rollout.serving.base import PlaneState, Served, ServerState, ServingPlane, model_version_of, server_name
from steps.rollout.serving.guard import return_to_champion

if TYPE_CHECKING:
    from registry.facade import ModelRegistry
    from steps.evals.weights import VersionReader
    from steps.rollout.served import PromptsFactory, PromptSource, RollbackPlan, Target

__all__ = [
    "RolloutError",
    "Lease",
    "Deployment",
    "current_lease",
    "request_canary_decision",
    "deploy",
    "require_lease",
    "abort",
    "promote",
    "rollback",
]


class RolloutError(ReleaseError):
    """A rollout was refused (another one in flight, nothing to roll back to) or could not be completed."""


class Lease(BaseModel):
    """Who is rolling out which version of a model (the value of the `llmrelease.rollout` model tag)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: str = Field(description="the served version: `3`, or `3.p2` with version 2 of the model's prompt")
    workflow_uid: str
    started_at: str
    environment: str = ""


class Deployment(BaseModel):
    """Where the candidate and the champion are served (served versions: `3`, `3.p2`), and the router in front."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    candidate: str
    champion: str | None
    candidate_url: str
    champion_url: str | None
    router_url: str


def current_lease(registry: ModelRegistry, model: str) -> Lease | None:
    """The rollout in flight for `model`, or None."""
    raw = registry.model_tags(model).get(LEASE_TAG)
    return Lease.model_validate_json(raw) if raw else None


def request_canary_decision(registry: ModelRegistry, model: str, action: str, actor: str) -> Lease | None:
    """Record a human's `resume` or `abort` for the canary in flight, which its paused step reads; None: none flies."""
    lease = current_lease(registry, model)
    if lease is not None:
        decision = {"workflow_uid": lease.workflow_uid, "action": action, "actor": actor, "at": _utc_now()}
        registry.set_model_tag(model, CANARY_DECISION_TAG, json.dumps(decision))
    return lease


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


def require_lease(registry: ModelRegistry, model: str, workflow_uid: str) -> Lease:
    """The lease, which must be held by `workflow_uid`; RolloutError otherwise (e.g. after a manual rollback)."""
    lease = current_lease(registry, model)
    if lease is None or lease.workflow_uid != workflow_uid:
        holder = f"workflow {lease.workflow_uid}" if lease else "nobody (rolled back or aborted)"
        raise RolloutError(
            f"the rollout of {model} by workflow {workflow_uid} no longer holds the rollout lease (held by {holder}): "
            "it was aborted or rolled back; start a new release to try again"
        )
    return lease


def _acquire(registry: ModelRegistry, model: str, candidate: str, workflow_uid: str, environment: str) -> Lease:
    lease = current_lease(registry, model)
    if lease is not None and lease.workflow_uid != workflow_uid:
        raise RolloutError(
            f"another rollout of {model} is in flight (version {lease.candidate} by workflow {lease.workflow_uid} "
            f"since {lease.started_at}): wait for it to end, or abort it with `llmrelease rollout abort {model}`"
        )
    if lease is None:
        lease = Lease(
            candidate=candidate,
            workflow_uid=workflow_uid,
            started_at=datetime.now(UTC).isoformat(),
            environment=environment,
        )
        registry.set_model_tag(model, LEASE_TAG, lease.model_dump_json())
    return lease


def deploy(
    registry: ModelRegistry,
    versions: VersionReader,
    plane: ServingPlane,
    home: Path,
    *,
    model: str,
    candidate: str,
    workflow_uid: str,
    environment: str = "",
    prompt: str | None = None,
    prompts: PromptsFactory | None = None,
) -> Deployment:
    """Take the rollout lease, serve the candidate and the champion (kept hot), and put the router in front.

    The candidate joins the router with weight 0: it gets traffic only from the canary step. A first release
    (no champion yet) starts the router with the candidate as its only server. Versions are served versions
    (`steps.rollout.served`): with `prompt` (the release's prompt name) the candidate applies that prompt's
    `candidate` version; a prompt-only release serves the champion's weights twice, under two prompts. The lease
    names the served candidate (what the canary step routes to). `prompts` makes the prompt registry
    (`registry.prompts.PromptRegistry.from_env` when None); it is called only when the model or the release has a
    prompt.
    """
    from steps.rollout.served import champion_target, release_target

    prompts = functools.cache(prompts or _prompts)
    with plane.locked(model) as state:
        mine = release_target(registry, prompts, model, candidate, prompt)
        _acquire(registry, model, mine.served, workflow_uid, environment)
        theirs = champion_target(registry, prompts, model)
        theirs = None if theirs is None or theirs.served == mine.served else theirs
        wanted = {mine.served: _served(versions, model, mine, home)}
        if theirs is not None:
            wanted[theirs.served] = _served(versions, model, theirs, home)
        servers = plane.ensure_servers(state, wanted)  # a cold champion and the candidate start together
        champion = theirs.served if theirs else None
        candidate_server, champion_server = servers[mine.served], servers.get(champion or "")
        router = plane.ensure_router(state, champion_server or candidate_server)
        if champion is not None and champion_server is not None:
            router.add_backend(server_name(champion), champion_server.address)
            if sum(router.weights().values()) == 0:
                router.set_weights({server_name(champion): 100})
        router.add_backend(server_name(mine.served), candidate_server.address)
        state.champion, state.canary = champion, mine.served
        return Deployment(
            model=model,
            candidate=mine.served,
            champion=champion,
            candidate_url=candidate_server.base_url,
            champion_url=champion_server.base_url if champion_server else None,
            router_url=plane.router_url(state),
        )


def _served(versions: VersionReader, model: str, target: Target, home: Path) -> Path | str | Served:
    """What the plane is given for `target`: the weights' location, with the prompt when one applies."""
    from steps.rollout.serving.weights import weights_location  # URIs: the plane fetches and verifies them

    weights = weights_location(versions, model, target.model_version, home)
    return weights if target.prompt is None else Served(weights=str(weights), prompt=target.prompt)


def _prompts() -> PromptSource:
    from registry.prompts import PromptRegistry

    return PromptRegistry.from_env()


def abort(
    registry: ModelRegistry, plane: ServingPlane, *, model: str, workflow_uid: str | None, reason: str
) -> str | None:
    """Put all traffic back on the champion, drop the canary, release the lease; return the aborted model version.

    With `workflow_uid`, only that workflow's rollout is aborted (the exit handler); None aborts any.
    """
    lease = current_lease(registry, model)
    if lease is None or (workflow_uid is not None and lease.workflow_uid != workflow_uid):
        return None
    with plane.locked(model) as state:
        canary, champion = state.canary or lease.candidate, state.champion
        return_to_champion(plane, state, canary)  # traffic first; a first release's router stops
    registry.delete_model_tag(model, LEASE_TAG)
    if champion is None or model_version_of(canary) != model_version_of(champion):  # not the champion's weights
        registry.tag_version(model, model_version_of(canary), CANARY_TAG, f"aborted: {reason}"[:5000])
    return model_version_of(canary)


def promote(
    registry: ModelRegistry,
    plane: ServingPlane,
    *,
    model: str,
    workflow_uid: str,
    actor: str,
    reason: str,
    keep_previous_hot_s: float,
) -> list[Any]:
    """Make the candidate champion (registry history records who and which workflow) and keep `previous` hot.

    The served candidate's model version is promoted (none moves for a prompt-only release: it is the champion's);
    the prompt's aliases are the promote step's.
    """
    lease = require_lease(registry, model, workflow_uid)
    candidate = lease.candidate
    with plane.locked(model) as state:
        router = plane.router(state)
        if router.weights().get(server_name(candidate)) != 100:
            raise RolloutError(
                f"version {candidate} of {model} does not serve 100% of traffic: finish the canary before promoting"
            )
        moves = registry.promote(
            model, model_version_of(candidate), actor=actor, reason=reason, workflow_uid=workflow_uid
        )
        old = state.champion
        if old is not None and old != candidate and old in state.servers:
            state.servers[old].hot_until = time.time() + keep_previous_hot_s
        if state.previous not in (None, old, candidate) and state.previous in state.servers:
            state.servers[state.previous].hot_until = time.time()  # the one before: its window is over
        state.champion, state.previous, state.canary = candidate, old, None
        plane.reap(state)
    registry.delete_model_tag(model, LEASE_TAG)
    registry.tag_version(model, model_version_of(candidate), CANARY_TAG, "completed")
    return moves


def _switch(plane: ServingPlane, state: PlaneState, server: ServerState) -> None:
    """All traffic to `server` (added to the router when missing)."""
    router = plane.ensure_router(state, server)
    router.add_backend(server_name(server.version), server.address)
    router.set_weights({server_name(server.version): 100})


def rollback(
    plane: ServingPlane,
    model: str,
    *,
    actor: str,
    reason: str,
    workflow_uid: str = "",
    registry_factory: Any = None,
    versions_factory: Any = None,
    home: Path | None = None,
    prompts_factory: PromptsFactory | None = None,
) -> dict[str, Any]:
    """Undo the champion's last move: traffic first, then the aliases; refuse when there is nothing to go back to.

    The last move was a model promotion (traffic and the model's `champion` back on its `previous`), a prompt
    promotion (the same weights with the prompt's `previous`: only the prompt's aliases move back), or both by one
    workflow (`steps.rollout.served.rollback_plan`). Fast path: when the plane's `previous` is hot, traffic moves
    before MLflow is even imported (a prompt rollback then starts nothing). Otherwise (or when the registry
    disagrees), the registry's target is served first (a real completion must succeed, so a cold stable never
    takes traffic it cannot answer), then traffic moves.

    Returns:
        {"from", "to" (served versions), "switched_s" (seconds from the call until all traffic was on `to`),
        "fast": bool, "prompt": the prompt rolled back or None}.
    """
    from steps.rollout.served import rollback_plan

    started = time.perf_counter()
    fast_target: str | None = None
    with plane.locked(model) as state:
        previous = state.servers.get(state.previous or "")
        if previous is not None and plane.is_ready(state, previous):
            _switch(plane, state, previous)
            fast_target = previous.version
    switched_s = time.perf_counter() - started if fast_target else None
    registry = registry_factory() if registry_factory else _registry()
    prompts = functools.cache(prompts_factory or _prompts)
    plan = rollback_plan(registry, prompts, model)
    if plan is None:
        if fast_target is not None:
            _undo_fast_switch(plane, model)
        champion = registry.get_alias(model, CHAMPION)
        raise RolloutError(
            f"nothing to roll back to: {model} has no 'previous' version (champion is {champion or 'unset'}); "
            f"promote a known-good version instead: llmrelease registry promote {model} <version> --actor <you>"
        )
    target = plan.target.served
    if fast_target != target:
        from registry.settings import llmrelease_home
        from steps.core.tracking import mlflow_client

        client = versions_factory() if versions_factory else mlflow_client()
        served = _served(client, model, plan.target, home or llmrelease_home())
        with plane.locked(model) as state:
            _switch(plane, state, plane.ensure_server(state, target, served))
        switched_s = time.perf_counter() - started
    _finish_rollback(plane, registry, model, plan, actor=actor, reason=reason, workflow_uid=workflow_uid)
    if plan.prompt is not None and plan.target.prompt is None:  # the model's first prompt: back to none
        prompts().remove_alias(
            plan.prompt, CHAMPION, actor=actor, reason=f"rolled back: {reason}", workflow_uid=workflow_uid
        )
    elif plan.prompt is not None:
        prompts().rollback(plan.prompt, actor=actor, reason=reason, workflow_uid=workflow_uid)
    return {
        "from": plan.champion.served,
        "to": target,
        "switched_s": switched_s,
        "fast": fast_target == target,
        "prompt": plan.prompt,
    }


def _finish_rollback(plane: ServingPlane, registry: ModelRegistry, model: str, plan: RollbackPlan, **who: str) -> None:
    """After traffic moved: drop any canary, fix the plane's roles, then move the model's aliases back if it moved."""
    target = plan.target.served
    with plane.locked(model) as state:
        router = plane.router(state)
        for name in list(router.backends):
            if name != server_name(target):
                router.remove_backend(name)
        for version, server in state.servers.items():
            if version != target:
                server.hot_until = time.time()
        state.champion, state.previous, state.canary = target, None, None
        plane.reap(state)
    registry.delete_model_tag(model, LEASE_TAG)
    if not plan.model_back:
        return  # a prompt rollback: the weights stay champion
    champion, back = plan.champion.model_version, plan.target.model_version
    if champion != back:
        registry.move_alias(model, CHAMPION, back, **who)
        registry.tag_version(model, champion, ROLLED_BACK_TAG, json.dumps({**who, "at": datetime.now(UTC).isoformat()}))
    registry.remove_alias(
        model,
        PREVIOUS,
        actor=who["actor"],
        reason=f"rolled back to it: {who['reason']}",
        workflow_uid=who["workflow_uid"],
    )


def _registry() -> ModelRegistry:
    from registry.facade import ModelRegistry

    return ModelRegistry.from_env()


def _undo_fast_switch(plane: ServingPlane, model: str) -> None:
    """The registry has no `previous` after all: put traffic back on the plane's champion."""
    with plane.locked(model) as state:
        champion = state.servers.get(state.champion or "")
        if champion is not None:
            _switch(plane, state, champion)
