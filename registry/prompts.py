"""`PromptRegistry`: prompts in MLflow's Prompt Registry, versioned by content digest, with the models' alias rules.

Registration is idempotent like the weights': a version whose tag `llmrelease.digest` equals the content's digest
(`registry.prompt_content`) is returned as it is, so the same text registered twice is one version. The aliases
are the models' (`candidate`, `champion`, `previous`), moved by the same plan (`registry.history.plan_promotion`)
and recorded in the same history, as prompt-level tags `llmrelease.history.<ts>-<uuid>` whose moves say
`kind: prompt`; `llmrelease registry history <prompt-name>` shows them (`prompt_history`). A prompt is referred to
as `prompts:/<name>@<alias>` or `prompts:/<name>/<version>` (MLflow's URIs). Every call runs under the one
retry policy (`registry.client.call_with_retry`); MLflow's refusals become one `RegistryError` line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from registry.client import call_with_retry, check_reachable, error_code, plain_mlflow_client, short_error
from registry.errors import IntegrityError, RegistryError
from registry.history import AliasMove, moves_from_tags, new_move, plan_promotion
from registry.prompt_content import GenerationSettings, PromptContent
from registry.settings import tracking_uri
from registry.tags import (
    CANDIDATE,
    CHAMPION,
    DIGEST_TAG,
    ENVIRONMENT_TAG,
    GIT_COMMIT_TAG,
    PREVIOUS,
    PROMPT_MODEL_TAG,
    PROMPT_VARIABLES_TAG,
    WORKFLOW_NAME_TAG,
    WORKFLOW_UID_TAG,
)

__all__ = ["PromptClientLike", "PromptRegistry", "RegisteredPrompt", "prompt_history", "prompt_uri"]

_T = TypeVar("_T")
_ALIASES = (CANDIDATE, CHAMPION, PREVIOUS)


class PromptClientLike(Protocol):
    """The part of `mlflow.tracking.MlflowClient` the prompt registry uses (MLflow 3)."""

    def register_prompt(  # noqa: D102
        self,
        name: str,
        template: str | list[dict[str, Any]],
        commit_message: str | None = ...,
        tags: dict[str, str] | None = ...,
        response_format: Any = ...,
        model_config: Any = ...,
    ) -> Any: ...
    def get_prompt(self, name: str) -> Any: ...  # noqa: D102
    def get_prompt_version(self, name: str, version: str | int) -> Any: ...  # noqa: D102
    def get_prompt_version_by_alias(self, name: str, alias: str) -> Any: ...  # noqa: D102
    def search_prompt_versions(  # noqa: D102
        self, name: str, max_results: int | None = ..., page_token: str | None = ...
    ) -> Any: ...
    def set_prompt_alias(self, name: str, alias: str, version: int) -> None: ...  # noqa: D102
    def delete_prompt_alias(self, name: str, alias: str) -> None: ...  # noqa: D102
    def set_prompt_tag(self, name: str, key: str, value: str) -> None: ...  # noqa: D102


class RegisteredPrompt(BaseModel):
    """The outcome of `PromptRegistry.register`: the version holding the digest, and whether it is new."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    digest: str
    created: bool

    @property
    def uri(self) -> str:
        """`prompts:/<name>/<version>`."""
        return prompt_uri(self.name, version=self.version)


def prompt_uri(name: str, *, alias: str | None = None, version: str | int | None = None) -> str:
    """MLflow's URI of a prompt version: `prompts:/<name>@<alias>` or `prompts:/<name>/<version>`."""
    if (alias is None) == (version is None):
        raise ValueError("pass exactly one of alias and version")
    return f"prompts:/{name}@{alias}" if alias is not None else f"prompts:/{name}/{version}"


class PromptRegistry:
    """The Prompt Registry facade over an MLflow client (any backend: sqlite, PostgreSQL, `mlflow server`)."""

    def __init__(
        self,
        client: PromptClientLike,
        *,
        tracking_uri: str | None = None,
        retry_seconds: float | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """Wrap `client`.

        Args:
            client: An `MlflowClient` (or anything with its prompt methods).
            tracking_uri: For messages and the reachability probe; read from the client if None.
            retry_seconds: The total deadline of one call, retries included; None: the default (60 s).
            clock: Nanoseconds since the epoch; stamps history entries.
        """
        self._client = client
        self._uri = tracking_uri or str(getattr(client, "tracking_uri", "") or "")
        self._retry_seconds = retry_seconds
        self._clock = clock

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, retry_seconds: float | None = None
    ) -> PromptRegistry:
        """A prompt registry on MLFLOW_TRACKING_URI, or on `<LLMRELEASE_HOME>/mlflow.db` (the models' store)."""
        uri = tracking_uri(environ)
        return cls(plain_mlflow_client(uri), tracking_uri=uri, retry_seconds=retry_seconds)

    # ---- registration ----

    def register(
        self,
        content: PromptContent,
        *,
        model_name: str,
        workflow_name: str,
        workflow_uid: str,
        git_commit: str,
        environment: str = "",
    ) -> RegisteredPrompt:
        """Register `content` once per digest and point `candidate` at its version.

        Validate the content first (`steps/onboarding/prompts.py`): this only versions it.

        Args:
            content: The prompt.
            model_name: The registered model it is released for (tagged on the version).
            workflow_name: The workflow registering it (tagged, and the actor of the alias move).
            workflow_uid: That workflow's uid.
            git_commit: The commit of the release spec's repository.
            environment: The environment of the release, tagged on a new version.

        Returns:
            The version holding the digest; `created` is False when it existed before.

        Raises:
            RegistryError: MLflow refused (e.g. a registered model already has the prompt's name) or is unreachable.
        """
        self._check_reachable()
        digest = content.digest
        tags = {
            DIGEST_TAG: digest,
            PROMPT_VARIABLES_TAG: json.dumps(content.variables, sort_keys=True),
            PROMPT_MODEL_TAG: model_name,
            GIT_COMMIT_TAG: git_commit,
            WORKFLOW_NAME_TAG: workflow_name,
            WORKFLOW_UID_TAG: workflow_uid,
            ENVIRONMENT_TAG: environment,
        }
        result = self._find_or_create(content, tags)
        if self.get_alias(content.name, CANDIDATE) != result.version:
            actor = "/".join(p for p in (workflow_name, workflow_uid) if p) or "llmrelease"
            why = f"registered {digest[:19]}..." + ("" if result.created else " (reused)")
            self.move_alias(content.name, CANDIDATE, result.version, actor=actor, reason=why, workflow_uid=workflow_uid)
        return result

    def _find_or_create(self, content: PromptContent, tags: dict[str, str]) -> RegisteredPrompt:
        name, digest = content.name, content.digest

        def find_or_create() -> RegisteredPrompt:
            # Idempotent as a unit, so a retry after a lost response never makes a second version.
            existing = self._find_by_digest(name, digest)
            if existing is not None:
                return RegisteredPrompt(name=name, version=str(existing.version), digest=digest, created=False)
            chat = [m.model_dump() for m in content.messages]
            template = content.template if isinstance(content.template, str) else chat
            g = content.generation
            settings = {"temperature": g.temperature, "max_tokens": g.max_tokens, "top_p": g.top_p}
            pv = self._client.register_prompt(
                name,
                template,
                commit_message=f"llmrelease {digest[:19]}...",
                tags=tags,
                model_config={**settings, **({"stop_sequences": list(g.stop)} if g.stop else {})},
            )
            return RegisteredPrompt(name=name, version=str(pv.version), digest=digest, created=True)

        try:
            return self._call(find_or_create)
        except RegistryError:
            raise
        except Exception as e:
            if "same name" in str(e):
                raise RegistryError(
                    f"prompt {name!r}: a registered model already has that name and MLflow keeps models and prompts "
                    f"in one namespace: rename prompt.name (e.g. {name}-prompt)"
                ) from e
            raise RegistryError(
                f"registering prompt {name!r} ({digest[:19]}...) at {self._uri} failed: {short_error(e)}: "
                "fix the cause and re-run (registration is idempotent)"
            ) from e

    def _find_by_digest(self, name: str, digest: str) -> Any:
        if self._client.get_prompt(name) is None:
            return None
        found: list[Any] = []
        page_token: str | None = None
        while True:
            page = self._client.search_prompt_versions(name, page_token=page_token)
            found += [pv for pv in page if (pv.tags or {}).get(DIGEST_TAG) == digest]
            page_token = getattr(page, "token", None)
            if not page_token:
                return min(found, key=lambda pv: int(pv.version)) if found else None

    # ---- reading ----

    def load(self, name: str, *, alias: str | None = None, version: str | int | None = None) -> PromptContent:
        """The content of a prompt version, by alias or number, checked against its recorded digest.

        Raises:
            RegistryError: No such prompt, alias or version; or MLflow is unreachable.
            IntegrityError: The version's template and settings no longer hash to its `llmrelease.digest` tag.
        """
        self._check_reachable()
        ref = prompt_uri(name, alias=alias, version=version)
        pv = self._version(name, alias=alias, version=version)
        if pv is None:
            raise RegistryError(f"prompt {ref} not found at {self._uri}: check the name, the alias or the version")
        content = _content_of(name, pv, ref)
        recorded = (pv.tags or {}).get(DIGEST_TAG, "")
        if content.digest != recorded:
            raise IntegrityError(
                f"prompt {ref}: its content hashes to {content.digest[:19]}... but was registered as "
                f"{recorded[:19] or 'no digest'}...: re-register the prompt from its release spec"
            )
        return content

    def version_of(self, name: str, alias: str) -> RegisteredPrompt | None:
        """The version `alias` points at, with its digest; None when the alias (or the prompt) is not set."""
        self._check_reachable()
        pv = self._version(name, alias=alias)
        if pv is None:
            return None
        digest = (pv.tags or {}).get(DIGEST_TAG, "")
        return RegisteredPrompt(name=name, version=str(pv.version), digest=digest, created=False)

    def _version(self, name: str, *, alias: str | None = None, version: str | int | None = None) -> Any:
        try:
            if alias is not None:
                return self._call(self._client.get_prompt_version_by_alias, name, alias)
            return self._call(self._client.get_prompt_version, name, str(version))
        except RegistryError:
            raise
        except Exception as e:
            if error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryError(
                f"cannot read prompt {name!r} at {self._uri}: {short_error(e)}: check the name and MLFLOW_TRACKING_URI"
            ) from e

    # ---- aliases ----

    def get_alias(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None if the alias (or the prompt) does not exist."""
        found = self.version_of(name, alias)
        return None if found is None else found.version

    def aliases(self, name: str) -> dict[str, str]:
        """`candidate`, `champion` and `previous`, those set, with the versions they point at."""
        return {alias: v for alias in _ALIASES if (v := self.get_alias(name, alias)) is not None}

    def move_alias(
        self, name: str, alias: str, version: str | int, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> AliasMove:
        """Point `alias` at `version` and record the move in the prompt's history.

        Raises:
            RegistryError: The version does not exist; nothing is recorded.
        """
        version = str(version)
        if self._version(name, version=version) is None:
            raise RegistryError(
                f"cannot move alias {alias!r} of prompt {name!r} to version {version!r}: no such version "
                f"(never registered or deleted): pick an existing version of {name!r}"
            )
        before = self.get_alias(name, alias)
        self._call(self._client.set_prompt_alias, name, alias, int(version))
        return self._record(name, alias, before, version, actor=actor, reason=reason, workflow_uid=workflow_uid)

    def promote(
        self, name: str, version: str | int, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> list[AliasMove]:
        """Make `version` the champion; the old champion, if any, becomes `previous` (as for models).

        Returns:
            The moves made (previous first, then champion); empty if `version` already is the champion.
        """
        plan = plan_promotion(self.get_alias(name, CHAMPION), str(version), reason)
        return [
            self.move_alias(name, alias, to, actor=actor, reason=why, workflow_uid=workflow_uid)
            for alias, to, why in plan
        ]

    def rollback(self, name: str, *, actor: str, reason: str, workflow_uid: str = "") -> list[AliasMove]:
        """Make `previous` the champion again and remove `previous`, as `llmrelease rollback` does for a model.

        A second rollback is then refused, as for models (it would serve the prompt just rolled back from).

        Raises:
            RegistryError: The prompt has no `previous` version.
        """
        target = self.get_alias(name, PREVIOUS)
        if target is None:
            raise RegistryError(f"prompt {name!r} has no 'previous' version to roll back to: promote a known-good one")
        moves = [self.move_alias(name, CHAMPION, target, actor=actor, reason=reason, workflow_uid=workflow_uid)]
        why = f"rolled back to it: {reason}"
        removed = self.remove_alias(name, PREVIOUS, actor=actor, reason=why, workflow_uid=workflow_uid)
        return [*moves, removed] if removed is not None else moves

    def remove_alias(
        self, name: str, alias: str, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> AliasMove | None:
        """Delete `alias` and record the move (to_version None); None when it was not set."""
        before = self.get_alias(name, alias)
        if before is None:
            return None
        self._call(self._client.delete_prompt_alias, name, alias)
        return self._record(name, alias, before, None, actor=actor, reason=reason, workflow_uid=workflow_uid)

    def exists(self, name: str) -> bool:
        """Whether a prompt named `name` is registered (a registered model of that name is not a prompt)."""
        self._check_reachable()
        return self._call(self._client.get_prompt, name) is not None

    def history(self, name: str) -> list[AliasMove]:
        """Every recorded alias move of prompt `name`, oldest first.

        Raises:
            RegistryError: No prompt of that name.
        """
        self._check_reachable()
        moves = prompt_history(self._client, name, uri=self._uri, retry_seconds=self._retry_seconds)
        if moves is None:
            raise RegistryError(f"prompt {name!r} not found at {self._uri}: check the name or MLFLOW_TRACKING_URI")
        return moves

    def _record(
        self,
        name: str,
        alias: str,
        before: str | None,
        after: str | None,
        *,
        actor: str,
        reason: str,
        workflow_uid: str,
    ) -> AliasMove:
        key, move = new_move(
            self._clock(),
            name,
            alias,
            before,
            after,
            actor=actor,
            reason=reason,
            workflow_uid=workflow_uid,
            kind="prompt",
        )
        self._call(self._client.set_prompt_tag, name, key, move.to_tag_value())
        return move

    def _check_reachable(self) -> None:
        check_reachable(self._uri, self._retry_seconds)

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return call_with_retry(fn, *args, uri=self._uri, retry_seconds=self._retry_seconds, **kwargs)


def prompt_history(client: Any, name: str, *, uri: str, retry_seconds: float | None = None) -> list[AliasMove] | None:
    """The alias moves of prompt `name`, oldest first, or None when no prompt has that name.

    `ModelRegistry.history` falls back on it, so `llmrelease registry history` shows a prompt's moves too.

    Raises:
        RegistryError: A history tag is not a valid move, or MLflow is unreachable.
    """
    get_prompt = getattr(client, "get_prompt", None)
    if get_prompt is None:
        return None
    prompt = call_with_retry(get_prompt, name, uri=uri, retry_seconds=retry_seconds)
    if prompt is None:
        return None
    return moves_from_tags(name, {str(k): str(v) for k, v in (prompt.tags or {}).items()})


def _content_of(name: str, pv: Any, ref: str) -> PromptContent:
    """The `PromptContent` a registered version holds: its template, model config and variables tag."""
    config = dict(pv.model_config or {})
    try:
        generation = GenerationSettings(
            temperature=config.get("temperature", 0.0),
            max_tokens=config.get("max_tokens", 256),
            top_p=config.get("top_p", 1.0),
            stop=list(config.get("stop_sequences") or []),
        )
        variables = json.loads((pv.tags or {}).get(PROMPT_VARIABLES_TAG) or "{}")
        return PromptContent(name=name, template=pv.template, variables=variables, generation=generation)
    except (ValidationError, ValueError) as e:
        raise RegistryError(
            f"prompt {ref} was not registered by llmrelease (its template, model config or "
            f"{PROMPT_VARIABLES_TAG} tag does not parse): register it from a release spec"
        ) from e
