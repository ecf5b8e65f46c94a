"""The history of alias moves: what an alias pointed at, when, who moved it and why.

Each move is stored as one registered-model tag, `llmrelease.history.<ts-ns>-<short-uuid>`, whose value is the
JSON of the move. The history therefore lives in the same database as the registry itself, survives restarts
and works with every MLflow backend (sqlite, PostgreSQL, a remote `mlflow server`). This module holds the
pure parts: the record, its encoding in a tag, the queries over a list of moves and the table printed by
`llmrelease registry history NAME`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from registry.errors import RegistryError
from registry.tags import CHAMPION, HISTORY_TAG_PREFIX, PREVIOUS

__all__ = [
    "AliasMove",
    "history_tag_key",
    "moves_from_tags",
    "new_move",
    "alias_at",
    "format_history",
    "plan_promotion",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_REASON = 2000  # MLflow caps registered-model tag values at 5000 characters.


class AliasMove(BaseModel):
    """One move of an alias of a registered model, as recorded in the history.

    Attributes:
        name: The registered model name.
        alias: The alias moved (candidate, champion, previous, ...).
        from_version: The version the alias pointed at before, or None if it was unset.
        to_version: The version the alias points at after the move, or None when the move removed the alias.
        when: When the move happened (UTC, timezone-aware).
        actor: Who moved it: a person, or a workflow as `<workflow-name>/<workflow-uid>`.
        reason: Why, in the actor's words.
        workflow_uid: The Argo workflow uid that moved it, or "" when moved by hand.
        kind: What the alias belongs to: a registered model, or a prompt of the Prompt Registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    alias: str
    from_version: str | None
    to_version: str | None
    when: datetime
    actor: str
    reason: str = ""
    workflow_uid: str = ""
    kind: Literal["model", "prompt"] = "model"

    @field_validator("when")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_validator("reason")
    @classmethod
    def _short_reason(cls, value: str) -> str:
        return value if len(value) <= _MAX_REASON else value[: _MAX_REASON - 3] + "..."

    def to_tag_value(self) -> str:
        """The JSON stored as the value of the history tag."""
        return self.model_dump_json()


def history_tag_key(time_ns: int) -> tuple[str, datetime]:
    """A fresh history tag key for a move at `time_ns`, and that time as a UTC datetime.

    The nanosecond timestamp is zero-padded so keys sort by time as strings too; the short uuid keeps two
    moves in the same nanosecond (two processes) apart.

    Args:
        time_ns: Nanoseconds since the Unix epoch.

    Returns:
        The tag key and the instant it names (microsecond precision).
    """
    key = f"{HISTORY_TAG_PREFIX}{time_ns:019d}-{uuid.uuid4().hex[:8]}"
    return key, _EPOCH + timedelta(microseconds=time_ns // 1000)


def new_move(
    time_ns: int,
    name: str,
    alias: str,
    before: str | None,
    after: str | None,
    *,
    actor: str,
    reason: str,
    workflow_uid: str,
    kind: Literal["model", "prompt"] = "model",
) -> tuple[str, AliasMove]:
    """One alias move at `time_ns` and the fresh history tag key it is stored under (`history_tag_key`)."""
    key, when = history_tag_key(time_ns)
    move = AliasMove(
        name=name,
        alias=alias,
        from_version=before,
        to_version=after,
        when=when,
        actor=actor,
        reason=reason,
        workflow_uid=workflow_uid,
        kind=kind,
    )
    return key, move


def moves_from_tags(name: str, tags: Mapping[str, str]) -> list[AliasMove]:
    """Decode the history tags of a registered model, sorted by time.

    Args:
        name: The registered model name (for error messages).
        tags: All tags of the registered model; those without the history prefix are ignored.

    Returns:
        The alias moves, oldest first.

    Raises:
        RegistryError: A history tag does not hold a valid move.
    """
    keyed: list[tuple[str, AliasMove]] = []
    for key, value in tags.items():
        if not key.startswith(HISTORY_TAG_PREFIX):
            continue
        try:
            keyed.append((key, AliasMove.model_validate_json(value)))
        except ValidationError as e:
            raise RegistryError(
                f"history tag {key!r} of registered model {name!r} is not a valid alias move "
                f"({e.error_count()} errors): fix or delete that tag"
            ) from e
    keyed.sort(key=lambda item: (item[1].when, item[0]))
    return [move for _, move in keyed]


def alias_at(moves: Iterable[AliasMove], alias: str, when: datetime) -> AliasMove | None:
    """The move that set `alias` to what it pointed at, at time `when`.

    Args:
        moves: Alias moves of one registered model, in any order.
        alias: The alias asked about.
        when: The instant; a naive datetime is taken as UTC.

    Returns:
        The latest move of `alias` at or before `when`, or None if the alias was not set yet.
    """
    at = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    found: AliasMove | None = None
    for move in sorted(moves, key=lambda m: m.when):
        if move.alias == alias and move.when <= at:
            found = move
    return found


def plan_promotion(champion: str | None, version: str, reason: str) -> list[tuple[str, str, str]]:
    """The alias moves that make `version` the champion, for models and prompts alike.

    The old champion, if any, becomes `previous` (the rollback target) before `version` becomes `champion`.

    Args:
        champion: The version `champion` points at now, or None.
        version: The version to promote.
        reason: Why, in the actor's words.

    Returns:
        `(alias, version, reason)` in the order to apply them; empty when `version` already is the champion.
    """
    if champion == version:
        return []
    moves = [] if champion is None else [(PREVIOUS, champion, f"champion before version {version}: {reason}")]
    return [*moves, (CHAMPION, version, reason)]


def format_history(moves: Iterable[AliasMove]) -> str:
    """A plain-text table of alias moves: time, alias, from -> to, actor, reason.

    Args:
        moves: The moves to show, printed in time order.

    Returns:
        The table, one line per move under a header, or a one-line note when there are none.
    """
    rows = [
        (
            m.when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            m.alias if m.kind == "model" else f"{m.alias} ({m.kind})",
            f"{m.from_version or '-'} -> {m.to_version or '-'}",
            m.actor,
            " ".join(m.reason.split()),
        )
        for m in sorted(moves, key=lambda m: m.when)
    ]
    if not rows:
        return "no alias moves recorded"
    header = ("TIME (UTC)", "ALIAS", "FROM -> TO", "ACTOR", "REASON")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)
