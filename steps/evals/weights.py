"""Registered versions resolved to weights on this machine: the digest-keyed model cache.

Used by the eval step, the Ray eval workers and the serving plane; all read a version's weights through
`weights_dir` / `download_weights`, from the version's source: its location in the digest-addressed weights store
(`registry.weights_store`, the manifest beside the files), or, for versions registered before the store, MLflow
artifacts (the manifest in the onboarding run). Nothing is used unverified: the manifest must hash to the
version's digest tag, and the downloaded files must match the manifest, before a cache entry is published; it is
then marked verified (`.verified` holds the digest) and reused without re-hashing. An entry without the marker
(written before) is verified once; one that fails is removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from registry.errors import IntegrityError, ReleaseError
from registry.integrity import MANIFEST_ARTIFACT, Manifest, verify_folder
from registry.tags import DIGEST_TAG
from registry.weights_store import WeightsStore, is_weights_uri
from steps.evals.cache import short_hex
from steps.evals.engines.base import EvalError

__all__ = [
    "VersionReader",
    "download_weights",
    "fetch_manifest",
    "model_version",
    "registered_digest",
    "weights_dir",
]

_MARKERS = (".complete", ".verified")


class VersionReader(Protocol):
    """The MLflow client calls the step needs (`mlflow.tracking.MlflowClient` provides them)."""

    @property
    def tracking_uri(self) -> str:  # noqa: D102
        ...

    def get_model_version(self, name: str, version: str) -> Any:  # noqa: D102
        ...


def model_version(client: VersionReader, name: str, version: str, alias: str | None) -> Any:
    """Version `version` of registered model `name` (reached through `alias`, if given, for the error message).

    Raises:
        EvalError: The version does not exist (or `alias` points at a deleted one), or MLflow cannot be read.
    """
    try:
        return client.get_model_version(name, version)
    except Exception as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(e, "error_code", "")) + str(e):
            raise EvalError(
                f"cannot read version {version} of {name}: {str(e)[:200]}: check MLFLOW_TRACKING_URI"
            ) from e
        if alias:
            raise EvalError(
                f"alias {alias} of {name} points at version {version}, which does not exist: move it with "
                f"llmrelease registry promote {name} <version> (or set-alias), or delete the alias"
            ) from e
        raise EvalError(f"version {version} of {name} does not exist: pass a registered version") from e


def registered_digest(mv: Any) -> str:
    """The weights digest the register step tagged model version `mv` with.

    Raises:
        EvalError: The version has no digest tag (it was not registered by the register step).
    """
    digest = dict(mv.tags or {}).get(DIGEST_TAG)
    if not digest:
        raise EvalError(
            f"version {mv.version} of {mv.name} has no {DIGEST_TAG} tag: register it with the register step"
        )
    return str(digest)


def weights_dir(client: VersionReader, name: str, version: str, home: Path) -> Path:
    """The local weights folder of a registered version (downloaded into the model cache the first time)."""
    mv = model_version(client, name, version, None)
    return download_weights(str(mv.source), registered_digest(mv), home, client.tracking_uri, mv.run_id or "")


def fetch_manifest(run_id: str, digest: str, tracking_uri: str) -> Manifest:
    """The weights manifest logged in onboarding run `run_id`, checked to hash to `digest`.

    Raises:
        EvalError: The run or its manifest cannot be read.
        IntegrityError: The manifest does not hash to `digest` (both digests named).
    """
    import mlflow.artifacts

    if not run_id:
        raise EvalError(f"weights {digest[:19]}... have no onboarding run: re-register the model (register step)")
    try:
        with tempfile.TemporaryDirectory(prefix="llmrelease-manifest-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=MANIFEST_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
            )
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as e:
        raise EvalError(
            f"cannot read the weights manifest {MANIFEST_ARTIFACT} of run {run_id} ({type(e).__name__}: "
            f"{str(e)[:200]}): check MLFLOW_TRACKING_URI and the artifact store"
        ) from e
    return Manifest.load(raw, expected=digest, where=f"{MANIFEST_ARTIFACT} of run {run_id}")


def download_weights(source: str, digest: str, home: Path, tracking_uri: str, run_id: str) -> Path:
    """The verified weights folder for `digest`, downloaded from `source` into the model cache the first time only.

    `source` is a weights store location (its manifest read from beside the files) or, for versions registered
    before the store, an MLflow artifact URI (the manifest of onboarding run `run_id`).

    Safe when parallel steps (batch-eval and safety) share the cache: the first writer downloads under an
    exclusive lock (`model-cache/.<digest>.lock`, fcntl) and publishes the folder with one rename; the others
    wait on the lock, then find the folder complete and reuse it. A folder left half-written by a killed writer
    (no `.complete` marker) is replaced; a complete one is never removed.

    The files are checked against the manifest (which must hash to `digest`) before the entry is published; a
    complete entry marked verified for `digest` is reused without reading the store or MLflow.

    Raises:
        EvalError: The download failed; names the source and what to check.
        IntegrityError: A file differs from the manifest (file, expected and found sha256); the entry is removed.
    """
    target = home / "model-cache" / short_hex(digest, 64)
    found = _complete(target)
    if found is not None and _verified(target, digest):
        return found
    manifest = _manifest(source, digest, tracking_uri, run_id)
    if Path(source).is_dir():  # a plain local path (registered in place): verified on every use
        verify_folder(Path(source), manifest.files, what=f"weights {source} ({digest[:19]}...)", fix=_FIX)
        return Path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        found = _complete(target)  # another writer finished while this one waited
        if found is not None:
            return _verify_entry(target, found, manifest, source)
        return _download(source, target, tracking_uri, manifest)


def _manifest(source: str, digest: str, tracking_uri: str, run_id: str) -> Manifest:
    """The manifest of `source`, checked to hash to `digest`: from the weights store, else the onboarding run."""
    if is_weights_uri(source):
        return WeightsStore.for_uri(source).read_manifest(source, expected=digest)
    return fetch_manifest(run_id, digest, tracking_uri)


def _fetch(source: str, staging: Path, tracking_uri: str, manifest: Manifest) -> Path:
    """Download the weights of `source` under `staging`; returns their folder (not yet verified)."""
    if is_weights_uri(source):
        return WeightsStore.for_uri(source).download(source, manifest, staging)
    import mlflow.artifacts

    got = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri)
    return Path(got)


_FIX = "the stored weights differ from what was registered; do not use them: re-register from the onboarded weights"


def _verified(target: Path, digest: str) -> bool:
    """Whether the entry carries the marker of a verification against `digest`."""
    try:
        return (target / ".verified").read_text(encoding="utf-8").strip() == digest
    except OSError:
        return False


def _verify_entry(target: Path, folder: Path, manifest: Manifest, source: str) -> Path:
    """Verify a complete entry once (the caller holds the lock): mark it, or remove it and raise."""
    if not _verified(target, manifest.digest):
        try:
            _check(folder, target, manifest, source)
        except IntegrityError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        (target / ".verified").write_text(manifest.digest, encoding="utf-8")
    return folder


def _check(folder: Path, target: Path, manifest: Manifest, source: str) -> None:
    ignore = _MARKERS if folder.resolve() == target.resolve() else ()
    verify_folder(folder, manifest.files, what=f"weights {source} ({manifest.digest[:19]}...)", fix=_FIX, ignore=ignore)


def _complete(target: Path) -> Path | None:
    """The weights folder inside a published cache entry, or None when there is none (or it is unusable)."""
    try:
        relative = (target / ".complete").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = target / relative
    return folder if folder.exists() and folder.resolve().is_relative_to(target.resolve()) else None


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `lock_path` (released when the process dies, so never left stale)."""
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(source: str, target: Path, tracking_uri: str, manifest: Manifest) -> Path:
    """Download `source` into a staging folder, verify it, then publish it as `target` (the caller holds the lock)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:16]}.", dir=target.parent))
    try:
        got = _fetch(source, staging, tracking_uri, manifest)
        relative = got.relative_to(staging)
        _check(got, staging, manifest, source)  # a mismatch leaves nothing behind (staging removed below)
        (staging / ".verified").write_text(manifest.digest, encoding="utf-8")
        (staging / ".complete").write_text(str(relative), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # half-written by a writer that died: never a complete one
        os.replace(staging, target)
    except ReleaseError:
        raise
    except Exception as e:
        raise EvalError(
            f"cannot download weights {source} ({type(e).__name__}: {str(e)[:200]}): "
            "check the artifact store and its credentials"
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / relative
