"""`llmrelease status NAME`: where a model's releases stand, read from the registry and MLflow only.

What it reads:

* aliases `champion`, `previous`, `candidate` and the alias history (`registry.history`);
* the registered-model tag `llmrelease.rollout` = {"candidate", "workflow_uid", "started_at"}, set while a canary
  runs;
* version tags `llmrelease.gate` (pass/fail), `llmrelease.rejected` (the reasons), `llmrelease.digest`,
  `llmrelease.canary` (`completed` or `aborted: <why>`, written when a rollout ends: the canary step's own abort,
  the exit handler's or `llmrelease rollout abort`), `llmrelease.evidence` (the exit handler's record of the run:
  its `workflow_status`), and `llmrelease.approval.<env>` = a `registry.tags.Approval` (steps/approval.py);
* the latest run of experiment `llmrelease-nightly` tagged `llmrelease.model_name` = NAME; its verdict is the tag
  `llmrelease.nightly.verdict` (steps/nightly.py) and the version the tag `llmrelease.model_version`.

A version whose release ended (rejected, aborted, or its run ended without success) is not in flight, even while
the alias `candidate` still points at it. Every name above is a constant of `registry.tags`.

`status_at(NAME, T)` answers "what was champion at T, who promoted it, who approved it" from the history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry.tags import (
    CANARY_TAG,
    CANDIDATE,
    CHAMPION,
    EVIDENCE_TAG,
    GATE_TAG,
    LEASE_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
    NIGHTLY_EXPERIMENT,
    NIGHTLY_VERDICT_TAG,
    PREVIOUS,
    REJECTED_TAG,
    Approval,
    approvals_from_tags,
)

__all__ = [
    "InFlight",
    "Nightly",
    "ReleaseStatus",
    "StatusAt",
    "VersionLine",
    "format_at",
    "format_status",
    "release_status",
    "status_at",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class VersionLine(BaseModel):
    """One version and how its release went."""

    model_config = _FROZEN

    version: str
    registered_at: datetime | None = None
    gate: str | None = None
    rejected: str | None = None
    aborted: str | None = None  # why its canary was aborted (the `llmrelease.canary` tag after "aborted: ")
    outcome: str
    promoted_at: datetime | None = None
    promoted_by: str | None = None
    approvals: list[Approval] = Field(default_factory=list)


class InFlight(BaseModel):
    """A candidate on its way: alias `candidate` and/or a canary in progress."""

    model_config = _FROZEN

    version: str
    via: list[str]


class Nightly(BaseModel):
    """The last nightly regression run of the model."""

    model_config = _FROZEN

    run_id: str
    run_name: str
    started_at: datetime
    status: str
    verdict: str | None = None
    version: str | None = None


class ReleaseStatus(BaseModel):
    """What `llmrelease status NAME` prints."""

    model_config = _FROZEN

    name: str
    champion: VersionLine | None
    previous: VersionLine | None
    in_flight: list[InFlight]
    last_nightly: Nightly | None
    releases: list[VersionLine]


class StatusAt(BaseModel):
    """What `llmrelease status NAME --at T` prints."""

    model_config = _FROZEN

    name: str
    at: datetime
    champion: str | None
    since: datetime | None = None
    promoted_by: str | None = None
    reason: str = ""
    workflow_uid: str = ""
    previous: str | None = None
    approvals: list[Approval] = Field(default_factory=list)


def _approvals(tags: Mapping[str, str]) -> list[Approval]:
    """The version's approvals, ordered by environment (`registry.tags.approvals_from_tags`)."""
    return [a for _, a in sorted(approvals_from_tags(dict(tags)).items())]


def _aborted(tags: Mapping[str, str]) -> str | None:
    """Why the version's canary was aborted, or None when it was not."""
    value = tags.get(CANARY_TAG) or ""
    if not value.startswith("aborted"):
        return None
    return value.removeprefix("aborted").removeprefix(":").strip() or "no reason recorded"


def _run_failed(tags: Mapping[str, str]) -> str | None:
    """The status of the version's release run when it ended without success (its evidence tag), else None."""
    try:
        record = json.loads(tags.get(EVIDENCE_TAG) or "{}")
    except ValueError:
        return None
    status = str(record.get("workflow_status") or "") if isinstance(record, dict) else ""
    return status if status and status != "Succeeded" else None


def _ended(tags: Mapping[str, str]) -> str | None:
    """How the version's release ended without a promotion: rejected, aborted, failed; None while it may go on."""
    if tags.get(REJECTED_TAG) or tags.get(GATE_TAG) == "fail":
        return "rejected"
    if _aborted(tags) is not None:
        return "aborted"
    failed = _run_failed(tags)
    return f"run {failed.lower()}" if failed else None


def _outcome(
    version: str, tags: Mapping[str, str], moves: list[Any], aliases: Mapping[str, str], flying: set[str]
) -> str:
    if aliases.get(CHAMPION) == version:
        return CHAMPION
    if version in flying:
        return "in flight"
    ended = _ended(tags)
    if ended in ("rejected", "aborted"):
        return ended
    champ = [m for m in moves if m.alias == CHAMPION]
    if any(m.to_version == version for m in champ):
        away = [m for m in champ if m.from_version == version]
        back = away and away[-1].to_version.isdigit() and int(away[-1].to_version) < int(version)
        return "rolled back" if back else "superseded"
    if aliases.get(PREVIOUS) == version:
        return PREVIOUS
    if ended:
        return ended
    return "gate passed, not promoted" if tags.get(GATE_TAG) == "pass" else "registered"


def _line(mv: Any, moves: list[Any], aliases: Mapping[str, str], flying: set[str]) -> VersionLine:
    tags = dict(mv.tags or {})
    version = str(mv.version)
    promo = [m for m in moves if m.alias == CHAMPION and m.to_version == version]
    created = getattr(mv, "creation_timestamp", None)
    return VersionLine(
        version=version,
        registered_at=datetime.fromtimestamp(created / 1000, UTC) if created else None,
        gate=tags.get(GATE_TAG),
        rejected=tags.get(REJECTED_TAG),
        aborted=_aborted(tags),
        outcome=_outcome(version, tags, moves, aliases, flying),
        promoted_at=promo[-1].when if promo else None,
        promoted_by=promo[-1].actor if promo else None,
        approvals=_approvals(tags),
    )


def _in_flight(
    model_tags: Mapping[str, str], aliases: Mapping[str, str], tags: Mapping[str, Mapping[str, str]]
) -> list[InFlight]:
    """Versions on their way: the rollout lease's candidate, and alias `candidate` unless its release ended.

    Args:
        model_tags: The registered model's tags (the lease).
        aliases: alias -> version.
        tags: version -> its tags.
    """
    via: dict[str, list[str]] = {}
    candidate = aliases.get(CANDIDATE)
    if candidate and candidate != aliases.get(CHAMPION) and _ended(tags.get(candidate, {})) is None:
        via.setdefault(candidate, []).append(f"alias {CANDIDATE}")
    raw = model_tags.get(LEASE_TAG)
    if raw:
        try:
            rollout = json.loads(raw)
            if isinstance(rollout, dict) and rollout.get("candidate"):
                how = (
                    f"canary by workflow {rollout.get('workflow_uid') or '?'} since {rollout.get('started_at') or '?'}"
                )
                via.setdefault(str(rollout["candidate"]), []).append(how)
        except ValueError:
            via.setdefault("?", []).append(f"unreadable {LEASE_TAG} tag: {raw[:60]}")
    return [InFlight(version=v, via=how) for v, how in sorted(via.items())]


def _nightly(client: Any, name: str) -> Nightly | None:
    experiment = client.get_experiment_by_name(NIGHTLY_EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{MODEL_NAME_TAG}` = '{name}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        return None
    run = runs[0]
    tags = run.data.tags
    return Nightly(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        status=run.info.status,
        started_at=datetime.fromtimestamp(run.info.start_time / 1000, UTC),
        verdict=tags.get(NIGHTLY_VERDICT_TAG),
        version=tags.get(MODEL_VERSION_TAG),
    )


def _versions(client: Any, name: str) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{name}'", page_token=token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            return sorted(found, key=lambda mv: int(mv.version), reverse=True)


def release_status(name: str, *, client: Any = None, registry: Any = None, last: int = 5) -> ReleaseStatus:
    """The status of registered model `name` (see the module docstring for what is read).

    Raises:
        RegistryError: The model does not exist, or the registry is unreachable.
    """
    from registry import ModelRegistry
    from steps.core.tracking import mlflow_client

    registry = registry or ModelRegistry.from_env()
    client = client or mlflow_client()
    moves = registry.history(name)  # raises RegistryError naming the model when it does not exist
    model = client.get_registered_model(name)
    aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
    versions = _versions(client, name)
    flying = _in_flight(dict(model.tags or {}), aliases, {str(mv.version): dict(mv.tags or {}) for mv in versions})
    in_flight = {f.version for f in flying}
    lines = {str(mv.version): _line(mv, moves, aliases, in_flight) for mv in versions}
    return ReleaseStatus(
        name=name,
        champion=lines.get(aliases.get(CHAMPION, "")),
        previous=lines.get(aliases.get(PREVIOUS, "")),
        in_flight=flying,
        last_nightly=_nightly(client, name),
        releases=list(lines.values())[:last],
    )


def status_at(name: str, when: datetime, *, client: Any = None, registry: Any = None) -> StatusAt:
    """Who was champion of `name` at `when`, who promoted it and why, and who approved it.

    Raises:
        RegistryError: The model does not exist, or the registry is unreachable.
    """
    from registry import ModelRegistry
    from registry.history import alias_at
    from steps.core.tracking import mlflow_client

    registry = registry or ModelRegistry.from_env()
    at = _utc(when)
    moves = registry.history(name)
    move = alias_at(moves, CHAMPION, at)
    previous = alias_at(moves, PREVIOUS, at)
    if move is None:
        return StatusAt(name=name, at=at, champion=None, previous=previous.to_version if previous else None)
    tags = dict((client or mlflow_client()).get_model_version(name, move.to_version).tags or {})
    approvals = [a for a in _approvals(tags) if _utc(a.approved_at) <= at]
    return StatusAt(
        name=name,
        at=at,
        champion=move.to_version,
        since=move.when,
        promoted_by=move.actor,
        reason=move.reason,
        workflow_uid=move.workflow_uid,
        previous=previous.to_version if previous else None,
        approvals=approvals,
    )


def _utc(t: datetime) -> datetime:
    """`t` in UTC; a naive time is taken as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _z(t: datetime | None) -> str:
    return "-" if t is None else _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def _approved(approvals: list[Approval]) -> str:
    return "; ".join(f"{a.environment} by {a.approver} at {_z(a.approved_at)}" for a in approvals) or "-"


def _describe(line: VersionLine | None) -> str:
    if line is None:
        return "none"
    promo = f", promoted {_z(line.promoted_at)} by {line.promoted_by}" if line.promoted_by else ""
    return f"v{line.version}{promo}; approved: {_approved(line.approvals)}"


def format_status(s: ReleaseStatus) -> str:
    """The status as the plain text `llmrelease status NAME` prints."""
    flying = "; ".join(f"v{f.version} ({', '.join(f.via)})" for f in s.in_flight) or "none"
    n = s.last_nightly
    nightly = (
        "none"
        if n is None
        else (f"{_z(n.started_at)} {n.run_name or n.run_id} v{n.version or '?'} {n.status}, verdict {n.verdict or '-'}")
    )
    lines = [
        f"{s.name}",
        f"  champion:   {_describe(s.champion)}",
        f"  previous:   {_describe(s.previous)}",
        f"  in flight:  {flying}",
        f"  nightly:    {nightly}",
        f"  last {len(s.releases)} releases:",
    ]
    rows = [("VERSION", "REGISTERED", "GATE", "OUTCOME", "PROMOTED", "APPROVED")] + [
        (
            f"v{r.version}",
            _z(r.registered_at),
            r.gate or "-",
            r.outcome,
            f"{_z(r.promoted_at)} by {r.promoted_by}" if r.promoted_by else "-",
            _approved(r.approvals),
        )
        for r in s.releases
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines += ["    " + "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]) for r in rows]
    lines += [f"    v{r.version} rejected: {' '.join(r.rejected.split())[:200]}" for r in s.releases if r.rejected]
    lines += [f"    v{r.version} aborted: {' '.join(r.aborted.split())[:200]}" for r in s.releases if r.aborted]
    return "\n".join(line.rstrip() for line in lines)


def format_at(s: StatusAt) -> str:
    """The answer of `llmrelease status NAME --at T` as plain text."""
    head = f"{s.name} at {_z(s.at)}:"
    if s.champion is None:
        return f"{head}\n  champion:  none (no champion had been promoted yet)"
    uid = f" (workflow {s.workflow_uid})" if s.workflow_uid else ""
    return "\n".join(
        [
            head,
            f"  champion:  v{s.champion} since {_z(s.since)}",
            f"  promoted:  by {s.promoted_by}{uid}: {s.reason or '-'}",
            f"  approved:  {_approved(s.approvals)}",
            f"  previous:  {'v' + s.previous if s.previous else 'none'}",
        ]
    )
