"""`ModelRegistry`: the one door to the MLflow model registry (versions, tags, aliases, alias history).

Registration is idempotent, keyed by the weights' digest: a version whose tag `llmrelease.digest` equals the
record's digest is returned as it is. Every alias move is recorded in the registry's own database (see
`registry.history`). Calls to an unreachable tracking server are retried with exponential backoff for a
bounded time, then fail with one `RegistryError` line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from registry.client import (
    MlflowClientLike,
    call_with_retry,
    check_reachable,
    error_code,
    is_http,
    plain_mlflow_client,
    short_error,
)
from registry.errors import RegistryError
from registry.history import AliasMove, moves_from_tags, new_move
from registry.integrity import MANIFEST_ARTIFACT, check_manifest_digest
from registry.record import OnboardingView, parse_record, version_source
from registry.settings import llmrelease_home, tracking_uri
from registry.tags import (
    CANDIDATE,
    CHAMPION,
    DIGEST_TAG,
    ENVIRONMENT_TAG,
    GIT_COMMIT_TAG,
    LICENSE_TAG,
    MODEL_NAME_TAG,
    ONBOARDING_EXPERIMENT,
    OWNER_TAG,
    PREVIOUS,
    RUN_COMPLETE_TAG,
    SOURCE_URI_TAG,
    WORKFLOW_NAME_TAG,
    WORKFLOW_UID_TAG,
)
from registry.weights_store import S3Like, WeightsStore

__all__ = ["ModelRegistry", "RegisteredVersion"]

_T = TypeVar("_T")


class RegisteredVersion(BaseModel):
    """The outcome of `ModelRegistry.register`: which version holds the digest, and whether it is new."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    digest: str
    created: bool
    run_id: str | None
    source: str


class ModelRegistry:
    """The model-registry facade over an MLflow client (any backend: sqlite, PostgreSQL, `mlflow server`)."""

    def __init__(
        self,
        client: MlflowClientLike,
        *,
        tracking_uri: str | None = None,
        artifact_root: Path | None = None,
        retry_seconds: float | None = None,
        clock: Callable[[], int] = time.time_ns,
        s3_client: S3Like | None = None,
    ) -> None:
        """Wrap `client`.

        Args:
            client: An `MlflowClient` (or anything with its methods).
            tracking_uri: For messages and the reachability probe; read from the client if None.
            artifact_root: Where the onboarding experiment keeps artifacts when the facade creates it;
                None lets the tracking server decide.
            retry_seconds: The total deadline of one call, retries included (`registry.retry`); None: the
                default, LLMRELEASE_SERVICE_DEADLINE_S or 60 s.
            clock: Nanoseconds since the epoch; stamps history entries.
            s3_client: A boto3 S3 client for reading the weights store; built from the environment if None.
        """
        self._client = client
        self._uri = tracking_uri or str(getattr(client, "tracking_uri", "") or "")
        self._artifact_root = artifact_root
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._s3 = s3_client

    @classmethod
    def from_uri(
        cls, uri: str, *, artifact_root: Path | None = None, retry_seconds: float | None = None
    ) -> ModelRegistry:
        """A registry on the tracking (and registry) store at `uri`; creates a sqlite file's folder."""
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = plain_mlflow_client(uri)
        return cls(client, tracking_uri=uri, artifact_root=artifact_root, retry_seconds=retry_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, retry_seconds: float | None = None) -> ModelRegistry:
        """A registry on MLFLOW_TRACKING_URI, or on `<LLMRELEASE_HOME or .llmrelease>/mlflow.db` (sqlite).

        Artifacts of a local store go under `<home>/mlartifacts`, never `./mlruns`.
        """
        home, uri = llmrelease_home(environ), tracking_uri(environ)
        root = None if is_http(uri) else home / "mlartifacts"
        return cls.from_uri(uri, artifact_root=root, retry_seconds=retry_seconds)

    # ---- registration ----

    def register(
        self, record: Mapping[str, Any] | BaseModel, *, workflow_name: str, workflow_uid: str, git_commit: str
    ) -> RegisteredVersion:
        """Register the model an onboarding record describes, once per digest, and point `candidate` at it.

        Args:
            record: The onboarding record, as its JSON object or a pydantic model.
            workflow_name: The Argo workflow registering it (tagged, and the actor of the alias move).
            workflow_uid: That workflow's uid.
            git_commit: The commit of the release spec's repository.

        Returns:
            The version holding the digest; `created` is False when it existed before.

        Raises:
            SpecError: The record is malformed.
            OnboardingError: The weights are not (all) in the store at the record's `weights_uri`.
            IntegrityError: The record's files, or the store's manifest at `weights_uri`, do not hash to the
                record's digest (both digests named); nothing is registered.
            RegistryError: MLflow refused or is unreachable.
        """
        from mlflow.exceptions import MlflowException

        raw = record.model_dump(mode="json") if isinstance(record, BaseModel) else dict(record)
        rec = parse_record(raw)
        if rec.kind == "weights":
            check_manifest_digest(rec.files, rec.digest, where=f"onboarding record of {rec.name!r}")
        self._check_reachable()
        tags = _version_tags(rec, git_commit=git_commit, workflow_name=workflow_name, workflow_uid=workflow_uid)
        try:
            existing = self._find_by_digest(rec.name, rec.digest)
            result = _as_registered(existing, rec.digest, created=False) if existing else None
            if result is None:
                run_id = self._onboarding_run(raw, rec, tags)
                self._ensure_model(rec)
                result = self._create_version(rec, version_source(rec), run_id, tags)
        except (MlflowException, OSError) as e:
            raise RegistryError(
                f"registering {rec.name!r} ({rec.digest[:19]}...) at {self._uri} failed: "
                f"{short_error(e)}: fix the cause and re-run (registration is idempotent)"
            ) from e
        if self._aliases(rec.name).get(CANDIDATE) != result.version:
            actor = "/".join(p for p in (workflow_name, workflow_uid) if p) or "llmrelease"
            why = f"registered {rec.digest[:19]}..." + ("" if result.created else " (reused)")
            self.move_alias(rec.name, CANDIDATE, result.version, actor=actor, reason=why, workflow_uid=workflow_uid)
        return result

    def _find_by_digest(self, name: str, digest: str) -> Any:
        page_token: str | None = None
        found: list[Any] = []
        while True:
            page = self._call(self._client.search_model_versions, f"name='{name}'", page_token=page_token)
            found += [mv for mv in page if (mv.tags or {}).get(DIGEST_TAG) == digest]
            page_token = getattr(page, "token", None)
            if not page_token:
                return min(found, key=lambda mv: int(mv.version)) if found else None

    def _onboarding_run(self, raw: dict[str, Any], rec: OnboardingView, tags: dict[str, str]) -> str:
        """The run holding the record's artifacts: a complete one left by a crashed attempt, or a new one."""
        experiment_id = self._experiment_id()
        query = (
            f"tags.`{DIGEST_TAG}` = '{rec.digest}' and tags.`{MODEL_NAME_TAG}` = '{rec.name}'"
            f" and tags.`{RUN_COMPLETE_TAG}` = 'true'"
        )
        previous = self._call(self._client.search_runs, [experiment_id], query, max_results=1)
        if previous:
            return str(previous[0].info.run_id)
        if rec.kind == "weights":
            self._check_store(rec)
        run = self._call(
            self._client.create_run,
            experiment_id,
            tags={**tags, MODEL_NAME_TAG: rec.name},
            run_name=f"onboard-{rec.name}",
        )
        run_id = run.info.run_id
        self._log_record(run_id, raw, rec)
        self._call(self._client.set_tag, run_id, RUN_COMPLETE_TAG, "true")
        self._call(self._client.set_terminated, run_id, "FINISHED")
        return str(run_id)

    def _check_store(self, rec: OnboardingView) -> None:
        """The store's manifest at `weights_uri` hashes to the record's digest, and every file is there."""
        uri = str(rec.weights_uri)
        if uri.startswith("file://") and is_http(self._uri):
            raise RegistryError(
                f"weights of {rec.name!r} are in the local store {uri}, which the MLflow server at {self._uri} "
                "cannot serve: set LLMRELEASE_S3_BUCKET (and AWS_ENDPOINT_URL_S3), then re-run the onboard step"
            )
        store = WeightsStore.for_uri(uri, s3=self._s3)
        store.check(uri, store.read_manifest(uri, expected=rec.digest))

    def _log_record(self, run_id: str, raw: dict[str, Any], rec: OnboardingView) -> None:
        from mlflow.entities import Param

        self._call(self._client.log_dict, run_id, raw, "onboarding/record.json")
        self._call(self._client.log_dict, run_id, rec.card.model_dump(), "onboarding/card.json")
        manifest = {"digest": rec.digest, "files": [f.model_dump() for f in rec.files]}
        self._call(self._client.log_dict, run_id, manifest, MANIFEST_ARTIFACT)
        params = {
            "kind": rec.kind,
            "environment": rec.environment,
            "source_uri": rec.source_uri,
            "policy_version": rec.policy_version,
            "spec_path": rec.spec_path,
            "spec_sha256": rec.spec_sha256,
            "file_count": len(rec.files),
            "total_bytes": sum(f.size for f in rec.files),
            **{f"config.{k}": v for k, v in (rec.config or {}).items() if not isinstance(v, dict | list)},
        }
        batch = [Param(k, str(v)[:500]) for k, v in params.items()]
        self._call(self._client.log_batch, run_id, params=batch)

    def _experiment_id(self) -> str:
        experiment = self._call(self._client.get_experiment_by_name, ONBOARDING_EXPERIMENT)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = self._artifact_root.resolve().as_uri() if self._artifact_root else None
        try:
            return str(self._call(self._client.create_experiment, ONBOARDING_EXPERIMENT, location))
        except Exception as e:
            if error_code(e) != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(
                    f"cannot create MLflow experiment {ONBOARDING_EXPERIMENT!r} at {self._uri}: "
                    f"{short_error(e)}: check the tracking server's permissions"
                ) from e
            return str(self._call(self._client.get_experiment_by_name, ONBOARDING_EXPERIMENT).experiment_id)

    def _ensure_model(self, rec: OnboardingView) -> None:
        try:
            self._call(
                self._client.create_registered_model,
                rec.name,
                {OWNER_TAG: rec.card.owner},
                rec.card.intended_use or None,
            )
        except Exception as e:
            if error_code(e) != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(
                    f"cannot create registered model {rec.name!r} at {self._uri}: "
                    f"{short_error(e)}: check the name and the server's permissions"
                ) from e

    def _create_version(self, rec: OnboardingView, source: str, run_id: str, tags: dict[str, str]) -> RegisteredVersion:
        def find_or_create() -> RegisteredVersion:
            # Idempotent as a unit, so a retry after a lost response never makes a second version.
            existing = self._find_by_digest(rec.name, rec.digest)
            if existing is not None:
                return _as_registered(existing, rec.digest, created=False)
            mv = self._client.create_model_version(
                rec.name, source, run_id=run_id, tags=tags, description=f"{rec.kind} from {rec.source_uri}"
            )
            return _as_registered(mv, rec.digest, created=True)

        try:
            return self._call(find_or_create)
        except RegistryError:
            raise
        except Exception as e:
            raise RegistryError(
                f"MLflow refused a version of {rec.name!r} with source {source}: {short_error(e)}: "
                "check the source URI and the server's artifact settings"
            ) from e

    # ---- aliases ----

    def get_alias(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None if the alias (or the model) does not exist."""
        self._check_reachable()
        return self._aliases(name).get(alias)

    def move_alias(
        self, name: str, alias: str, version: str | int, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> AliasMove:
        """Point `alias` at `version` and record the move in the history.

        Raises:
            RegistryError: The version does not exist (never registered, or deleted); nothing is recorded.
        """
        self._check_reachable()
        version = str(version)
        self._require_version(name, version, f"move alias {alias!r} of")
        before = self._aliases(name).get(alias)
        self._call(self._client.set_registered_model_alias, name, alias, version)
        return self._record(name, alias, before, version, actor=actor, reason=reason, workflow_uid=workflow_uid)

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
        """Write one alias move into the history (a registered-model tag) and return it."""
        key, move = new_move(
            self._clock(), name, alias, before, after, actor=actor, reason=reason, workflow_uid=workflow_uid
        )
        self._call(self._client.set_registered_model_tag, name, key, move.to_tag_value())
        return move

    def promote(
        self, name: str, version: str | int, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> list[AliasMove]:
        """Make `version` the champion; the old champion, if any, becomes `previous`.

        Returns:
            The moves made (previous first, then champion); empty if `version` already is the champion.
        """
        version = str(version)
        self._require_version(name, version, f"move alias {CHAMPION!r} of")
        old = self.get_alias(name, CHAMPION)
        if old == version:
            return []
        moves = []
        if old is not None:
            moves.append(
                self.move_alias(
                    name,
                    PREVIOUS,
                    old,
                    actor=actor,
                    workflow_uid=workflow_uid,
                    reason=f"champion before version {version}: {reason}",
                )
            )
        moves.append(self.move_alias(name, CHAMPION, version, actor=actor, reason=reason, workflow_uid=workflow_uid))
        return moves

    def remove_alias(
        self, name: str, alias: str, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> AliasMove | None:
        """Delete `alias` and record the move (to_version None); None when it was not set."""
        self._check_reachable()
        before = self._aliases(name).get(alias)
        if before is None:
            return None
        self._call(self._client.delete_registered_model_alias, name, alias)
        return self._record(name, alias, before, None, actor=actor, reason=reason, workflow_uid=workflow_uid)

    def model_tags(self, name: str) -> dict[str, str]:
        """The registered model's tags ({} when the model does not exist)."""
        self._check_reachable()
        model = self._model(name)
        return {} if model is None else {str(k): str(v) for k, v in (model.tags or {}).items()}

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag on the registered model (it must exist)."""
        self._check_reachable()
        self._call(self._client.set_registered_model_tag, name, key, value)

    def delete_model_tag(self, name: str, key: str) -> None:
        """Delete a tag of the registered model; a missing tag is not an error."""
        self._check_reachable()
        if key in self.model_tags(name):
            self._call(self._client.delete_registered_model_tag, name, key)

    def rollback_target(self, name: str) -> str | None:
        """The version to roll back to: the one `previous` points at, or None when there is none."""
        return self.get_alias(name, PREVIOUS)

    def tag_version(self, name: str, version: str | int, key: str, value: str) -> None:
        """Set tag `key` = `value` on a version; RegistryError if the version does not exist."""
        self._check_reachable()
        self._require_version(name, str(version), f"tag {key!r} on")
        self._call(self._client.set_model_version_tag, name, str(version), key, value)

    # ---- history ----

    def history(self, name: str) -> list[AliasMove]:
        """Every recorded alias move of registered model `name`, oldest first."""
        self._check_reachable()
        model = self._model(name)
        if model is None:
            raise RegistryError(
                f"registered model {name!r} not found at {self._uri}: check the name or MLFLOW_TRACKING_URI"
            )
        return moves_from_tags(name, dict(model.tags or {}))

    # ---- plumbing ----

    def _model(self, name: str) -> Any:
        """The registered model `name`, or None if it does not exist."""
        try:
            return self._call(self._client.get_registered_model, name)
        except RegistryError:
            raise
        except Exception as e:
            if error_code(e) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise RegistryError(
                f"cannot read registered model {name!r} at {self._uri}: {short_error(e)}: "
                "check the name and MLFLOW_TRACKING_URI"
            ) from e

    def _aliases(self, name: str) -> dict[str, str]:
        model = self._model(name)
        return {} if model is None else {str(k): str(v) for k, v in (model.aliases or {}).items()}

    def _require_version(self, name: str, version: str, action: str) -> None:
        try:
            self._call(self._client.get_model_version, name, version)
        except RegistryError:
            raise
        except Exception as e:
            if error_code(e) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise RegistryError(
                    f"cannot read version {version!r} of registered model {name!r} at {self._uri}: "
                    f"{short_error(e)}: check the name and MLFLOW_TRACKING_URI"
                ) from e
            raise RegistryError(
                f"cannot {action} registered model {name!r} to version {version!r}: no such version "
                f"(never registered or deleted): pick an existing version of {name!r}"
            ) from e

    def _check_reachable(self) -> None:
        check_reachable(self._uri, self._retry_seconds)

    def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return call_with_retry(fn, *args, uri=self._uri, retry_seconds=self._retry_seconds, **kwargs)


def _version_tags(rec: OnboardingView, *, git_commit: str, workflow_name: str, workflow_uid: str) -> dict[str, str]:
    return {
        DIGEST_TAG: rec.digest,
        LICENSE_TAG: rec.card.license,
        SOURCE_URI_TAG: rec.source_uri,
        GIT_COMMIT_TAG: git_commit,
        WORKFLOW_NAME_TAG: workflow_name,
        WORKFLOW_UID_TAG: workflow_uid,
        ENVIRONMENT_TAG: rec.environment,
    }


def _as_registered(mv: Any, digest: str, *, created: bool) -> RegisteredVersion:
    return RegisteredVersion(
        name=mv.name,
        version=str(mv.version),
        digest=digest,
        created=created,
        run_id=mv.run_id or None,
        source=mv.source,
    )
