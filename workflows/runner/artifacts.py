"""Artifacts as Argo moves them: through an artifact repository (S3, via boto3), else the run's local folder.

The repository is configured as on a cluster: the `artifact-repositories` ConfigMap of the cluster config
(`llmrelease run --cluster-config DIR`), one repository per key, the default named by the annotation
`workflows.argoproj.io/default-artifact-repository`, or the key a workflow's `spec.artifactRepositoryRef` names.
Credentials come from the Secrets the repository's `accessKeySecret` / `secretKeySecret` name.

Outputs are saved as Argo's executor saves them: at their `s3.key`, else at the repository's `keyFormat`
(default `{{workflow.name}}/{{pod.name}}`) joined with `<name>.tgz` (tar, the default, gzip-compressed), the
path's base name (`archive: none`; a folder becomes one object per file) or `<name>.zip`. Inputs come from
`from:` (another node's output), `s3:` (a key-only artifact resolves against the repository), `http:`, `git:`
and `raw:`, with `subPath`, `optional` and `mode`. Without a repository (and no `s3:` artifact), outputs are
copied into the run's folder as before. A problem is an `ArtifactError`: the node ends in Error, as in Argo.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workflows.argo.expressions import substitute
from workflows.runner.artifact_sources import (
    ArtifactError,
    chmod,
    copy_from,
    copy_local,
    fetch_git,
    fetch_http,
    pack,
    remove,
    unpacked,
)
from workflows.runner.cluster import ClusterConfig, MissingConfig

__all__ = [
    "ArtifactError",
    "ArtifactStore",
    "Repository",
    "artifact_reference",
    "input_source",
    "resolve_argument",
    "resolve_repository",
]

DEFAULT_CONFIG_MAP = "artifact-repositories"
DEFAULT_ANNOTATION = "workflows.argoproj.io/default-artifact-repository"
DEFAULT_KEY_FORMAT = "{{workflow.name}}/{{pod.name}}"
_SOURCES = ("from", "raw", "s3", "http", "git", "artifactory", "gcs", "oss", "hdfs", "azure", "plugin")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_REFUSED = {"401", "403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


@dataclass(frozen=True)
class Repository:
    """One entry of the `artifact-repositories` ConfigMap: its ref (`configmap#key`) and its `s3:` section."""

    ref: str
    s3: Mapping[str, Any]


@dataclass(frozen=True)
class _S3:
    """Where one artifact lives: bucket, key, how to reach the endpoint, and how it was archived."""

    bucket: str
    key: str
    config: Mapping[str, Any]  # endpoint, insecure, region, accessKeySecret, secretKeySecret
    archive: str = ""  # "tar", "none", "zip", or "" (unknown: detect a tarball, as Argo does)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def resolve_repository(cluster: ClusterConfig, ref: Mapping[str, Any] | None) -> Repository | None:
    """The repository a workflow uses: its `artifactRepositoryRef`, else the ConfigMap's default, else None.

    Raises:
        ArtifactError: `ref` names a ConfigMap or key that is not there, or the entry is not an S3 repository.
    """
    config_map = str((ref or {}).get("configMap") or DEFAULT_CONFIG_MAP)
    default = cluster.annotations.get(config_map, {}).get(DEFAULT_ANNOTATION, "")
    key = str((ref or {}).get("key") or default)
    data = cluster.config_maps.get(config_map)
    if data is None or key not in data:
        if ref is None:
            return None
        raise ArtifactError(
            f"failed to find any artifact repository for artifact repository ref "
            f'"{(ref or {}).get("configMap", "")}#{(ref or {}).get("key", "")}": add ConfigMap '
            f"{config_map} with key {key or '<key>'} to {cluster.source}"
        )
    try:
        entry = yaml.safe_load(data[key])
    except yaml.YAMLError as e:
        raise ArtifactError(f"artifact repository {config_map}#{key} is not YAML: fix it in {cluster.source}") from e
    if not isinstance(entry, dict) or not isinstance(entry.get("s3"), dict):
        raise ArtifactError(
            f"artifact repository {config_map}#{key}: the local runner supports s3 repositories "
            "only (S3, MinIO, moto); give it an `s3:` section"
        )
    return Repository(f"{config_map}#{key}", entry["s3"])


def resolve_argument(art: Mapping[str, Any], scope: Mapping[str, str], where: str) -> dict[str, Any]:
    """An argument artifact with every `{{...}}` resolved (its `from` becomes the stored artifact's reference).

    Raises:
        WorkflowError: a reference does not resolve.
    """
    return _substituted(art, scope, f"{where}: artifact {art.get('name')}")


def artifact_reference(art: Mapping[str, Any]) -> str:
    """What `{{inputs.artifacts.NAME}}` stands for in a `from:`: the stored artifact's reference, else its source."""
    if "from" in art:
        return str(art["from"])
    return json.dumps({k: v for k, v in art.items() if k != "name"}, sort_keys=True)


def input_source(
    declared: Mapping[str, Any], argument: Mapping[str, Any] | None, template: str
) -> Mapping[str, Any] | None:
    """The input artifact to load, as Argo merges it: the template's own location wins, else the argument's.

    Returns None for an optional artifact nobody supplied.

    Raises:
        ArtifactError: a required artifact has no source.
    """
    if any(k in declared for k in _SOURCES):
        return declared
    if argument is None or not any(k in argument for k in _SOURCES):
        if declared.get("optional"):
            return None
        raise ArtifactError(
            f"template {template}: required artifact '{declared['name']}' not supplied; pass it "
            "with `from:` or give it a source (s3, http, git, raw)"
        )
    merged = {**argument, "path": declared["path"]}
    merged.update({k: declared[k] for k in ("mode", "recurseMode", "optional") if k in declared})
    return merged


class ArtifactStore:
    """A run's artifacts: saved to and loaded from its repository (S3) or, without one, its local folder."""

    def __init__(self, cluster: ClusterConfig | None = None, ref: Mapping[str, Any] | None = None) -> None:
        """Resolve the repository now; an unresolvable `ref` fails each node that needs it, in Error."""
        self.cluster = cluster or ClusterConfig()
        self.problem = ""
        try:
            self.repository = resolve_repository(self.cluster, ref)
        except ArtifactError as e:
            self.repository, self.problem = None, str(e)
        self._saved: dict[str, _S3] = {}
        self._clients: dict[tuple[str, ...], Any] = {}
        self._buckets: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # ---- outputs --------------------------------------------------------------------------------------------

    def save(self, art: Mapping[str, Any], source: Path, scope: Mapping[str, str], local_dir: Path) -> str:
        """Store output artifact `art` (written at `source`); returns the reference `from:` resolves to.

        Raises:
            ArtifactError: no repository for an `s3:` artifact, a missing bucket or secret, an upload failure.
        """
        art = _substituted(art, scope, f"template {scope.get('pod.name', '')}: output artifact {art['name']}")
        if "s3" not in art and self.repository is None:
            if self.problem:
                raise ArtifactError(self.problem)
            return str(copy_local(art, source, local_dir))
        archive, level = _archive(art)
        loc = self._location(art, archive)
        if not loc.key:
            key_format = str(self._repository(art).s3.get("keyFormat") or "")
            prefix = str(self._repository(art).s3.get("keyPrefix") or "")
            pattern = key_format or posixpath.join(prefix, DEFAULT_KEY_FORMAT)
            base = substitute(pattern, _key_scope(scope), where=f"artifact repository {self._ref()}: keyFormat")
            name = {"tar": f"{art['name']}.tgz", "zip": f"{art['name']}.zip"}.get(archive, source.name)
            loc = _S3(loc.bucket, posixpath.join(base, name), loc.config, archive)
        self._upload(loc, source, level, str(art["name"]))
        with self._lock:
            self._saved[loc.url] = loc
        return loc.url

    def _upload(self, loc: _S3, source: Path, level: int, name: str) -> None:
        client = self._client(loc, name)
        with tempfile.TemporaryDirectory(prefix="llmrelease-artifact-") as tmp:
            if loc.archive in ("tar", "zip"):
                packed = Path(tmp) / "packed"
                pack(source, packed, loc.archive, level)
                files = [(packed, loc.key)]
            elif source.is_dir():
                files = [
                    (p, posixpath.join(loc.key.rstrip("/"), p.relative_to(source).as_posix()))
                    for p in sorted(source.rglob("*"))
                    if p.is_file()
                ]
            else:
                files = [(source, loc.key)]
            for path, key in files:
                _call(
                    lambda p=path, k=key: client.upload_file(str(p), loc.bucket, k),
                    f"artifact {name}: upload to s3://{loc.bucket}/{key}",
                )

    # ---- inputs ---------------------------------------------------------------------------------------------

    def load(self, art: Mapping[str, Any], target: Path, scope: Mapping[str, str]) -> bool:
        """Place input artifact `art` at `target` (its subPath, unarchived, mode applied).

        Returns False for an optional artifact whose source does not exist.

        Raises:
            ArtifactError: the source (repository, bucket, key, URL, git repository, secret) is missing.
        """
        where = f"template {scope.get('pod.name', '')}: input artifact {art['name']}"
        art = _substituted(art, scope, where)
        name = str(art["name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            got = self._fetch(art, staging / "fetched")
            if got is None:
                if art.get("optional"):
                    return False
                raise ArtifactError(
                    f"artifact {name}: {_describe(art)} does not exist; write it first or mark the input optional"
                )
            if art.get("subPath"):
                got = got / str(art["subPath"])
                if not got.exists():
                    raise ArtifactError(f"artifact {name}: subPath {art['subPath']} is not in {_describe(art)}")
            remove(target)
            shutil.move(str(got), str(target))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if art.get("mode") is not None:
            chmod(target, int(art["mode"]), bool(art.get("recurseMode")))
        return True

    def _fetch(self, art: Mapping[str, Any], dest: Path) -> Path | None:
        """Materialise the whole artifact at `dest` (unarchived); None when it does not exist."""
        name = str(art["name"])
        if "raw" in art:
            dest.write_text(str((art["raw"] or {}).get("data", "")))
            return dest
        if "http" in art:
            return unpacked(
                fetch_http(art["http"], dest.with_suffix(".download"), name, self._secret),
                dest,
                _archive(art)[0] if "archive" in art else "",
            )
        if "git" in art:
            return fetch_git(art["git"], dest, name, self._secret)
        if "from" in art:
            reference = str(art["from"])
            if reference.startswith("{"):  # an artifact given by its source (`artifact_reference`)
                return self._fetch({**json.loads(reference), "name": name}, dest)
            with self._lock:
                saved = self._saved.get(reference)
            if saved is None:
                return copy_from(Path(reference), dest)
            return self._download(saved, dest, name)
        if "s3" in art:
            return self._download(self._location(art, _archive(art)[0] if "archive" in art else ""), dest, name)
        kind = next(k for k in _SOURCES if k in art)
        raise ArtifactError(f"artifact {name}: {kind} artifacts need a cluster; use s3, http, git or raw")

    def _download(self, loc: _S3, dest: Path, name: str) -> Path | None:
        if not loc.key:
            raise ArtifactError(f"artifact {name}: s3 artifact without a key; give s3.key")
        client = self._client(loc, name)
        download = dest.with_suffix(".download")
        try:
            client.download_file(loc.bucket, loc.key, str(download))
        except Exception as e:  # noqa: BLE001 - botocore's ClientError, imported lazily
            if _code(e) not in _NOT_FOUND:
                raise ArtifactError(f"artifact {name}: cannot read {loc.url}: {_reason(e)}") from e
        else:
            return unpacked(download, dest, loc.archive)
        prefix = loc.key.rstrip("/") + "/"
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
        keys = _call(
            lambda: [o["Key"] for page in pages for o in page.get("Contents", [])],
            f"artifact {name}: list s3://{loc.bucket}/{prefix}",
        )
        for key in keys:
            path = dest / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            _call(lambda k=key, p=path: client.download_file(loc.bucket, k, str(p)), f"artifact {name}: get {key}")
        return dest if keys else None

    # ---- locations, clients, secrets ----------------------------------------------------------------------

    def _repository(self, art: Mapping[str, Any]) -> Repository:
        if self.repository is None:
            raise ArtifactError(
                self.problem
                or f"artifact {art['name']}: no artifact repository is configured; "
                f"add an `{DEFAULT_CONFIG_MAP}` ConfigMap (annotated with {DEFAULT_ANNOTATION}) "
                "to --cluster-config, or give s3.bucket and s3.endpoint"
            )
        return self.repository

    def _ref(self) -> str:
        return self.repository.ref if self.repository else "none"

    def _location(self, art: Mapping[str, Any], archive: str) -> _S3:
        """The artifact's own `s3:` location when it names a bucket, else its key in the repository."""
        own = dict(art.get("s3") or {})
        config = own if own.get("bucket") else {**self._repository(art).s3, **own}
        if not config.get("bucket"):
            raise ArtifactError(f"artifact repository {self._ref()}: s3.bucket is not set; add it to the ConfigMap")
        return _S3(str(config["bucket"]), str(own.get("key") or ""), config, archive)

    def _secret(self, selector: Mapping[str, Any] | None, what: str) -> str | None:
        if not selector:
            return None
        name, key = str(selector.get("name", "")), str(selector.get("key", ""))
        try:
            return self.cluster.key("secret", name, key)
        except MissingConfig as e:
            raise ArtifactError(
                f'{what}: secret "{name}" (key {key}) not found: add a Secret named {name} '
                f"with key {key} to {self.cluster.source}"
            ) from e

    def _client(self, loc: _S3, name: str) -> Any:
        """A boto3 S3 client for the location's endpoint and credentials (one per endpoint, reused)."""
        cfg = loc.config
        what = f"artifact {name}"
        access = self._secret(cfg.get("accessKeySecret"), what)
        secret = self._secret(cfg.get("secretKeySecret"), what)
        endpoint = str(cfg.get("endpoint") or "")
        if endpoint and "://" not in endpoint:
            endpoint = ("http://" if cfg.get("insecure") else "https://") + endpoint
        region = str(cfg.get("region") or "us-east-1")
        cache = (endpoint, region, access or "", secret or "")
        with self._lock:
            if cache not in self._clients:
                self._clients[cache] = _new_client(endpoint or None, region, access, secret)
            client = self._clients[cache]
            checked = (endpoint, loc.bucket) in self._buckets
        if not checked:
            _check_bucket(client, loc, endpoint or "AWS S3", what)
            with self._lock:
                self._buckets.add((endpoint, loc.bucket))
        return client


# ---- helpers ------------------------------------------------------------------------------------------------


def _substituted(value: Any, scope: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return substitute(value, scope, where=where)
    if isinstance(value, Mapping):
        return {k: _substituted(v, scope, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substituted(v, scope, where) for v in value]
    return value


def _key_scope(scope: Mapping[str, str]) -> dict[str, str]:
    """The pod's scope plus `workflow.creationTimestamp.<strftime letter>`, which keyFormat may use."""
    out = dict(scope)
    stamp = scope.get("workflow.creationTimestamp", "")
    try:
        created = time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return out
    out.update({f"workflow.creationTimestamp.{c}": time.strftime(f"%{c}", created) for c in "YmdHMSyjaAbBp"})
    return out


def _archive(art: Mapping[str, Any]) -> tuple[str, int]:
    """('tar' | 'none' | 'zip', gzip level); tar at the default gzip level when unset, as in Argo."""
    strategy = art.get("archive") or {"tar": {}}
    if "none" in strategy:
        return "none", 0
    if "zip" in strategy:
        return "zip", 0
    level = (strategy.get("tar") or {}).get("compressionLevel")
    return "tar", 6 if level is None or int(level) < 0 else int(level)


def _describe(art: Mapping[str, Any]) -> str:
    if "from" in art:
        return str(art["from"])
    if "s3" in art:
        return f"s3 key {(art['s3'] or {}).get('key', '')!r}"
    if "http" in art:
        return f"http url {(art['http'] or {}).get('url', '')}"
    return next((k for k in _SOURCES if k in art), "its source")


def _new_client(endpoint: str | None, region: str, access: str | None, secret: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:
        raise ArtifactError(
            "an artifact repository needs boto3: pip install 'llmrelease[steps]' (or pip install boto3)"
        ) from e
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=10)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=config,
    )


def _check_bucket(client: Any, loc: _S3, endpoint: str, what: str) -> None:
    bucket = loc.bucket
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as e:  # noqa: BLE001 - botocore's errors, imported lazily
        if _code(e) in _NOT_FOUND | {"NoSuchBucket"}:
            raise ArtifactError(
                f"{what}: bucket {bucket} does not exist at {endpoint}; create it or fix the artifact repository"
            ) from e
        if _code(e) in _REFUSED:
            raise ArtifactError(
                f"{what}: access to bucket {bucket} at {endpoint} was refused ({_reason(e)}): check the "
                f"credentials in {_credentials(loc.config)} and the bucket's policy"
            ) from e
        raise ArtifactError(f"{what}: cannot reach bucket {bucket} at {endpoint}: {_reason(e)}") from e


def _credentials(config: Mapping[str, Any]) -> str:
    """Where the repository's credentials come from: its Secret(s) and keys, else the environment's AWS keys."""
    keys: dict[str, list[str]] = {}
    for field in ("accessKeySecret", "secretKeySecret"):
        selector = config.get(field) or {}
        if selector:
            keys.setdefault(str(selector.get("name", "")), []).append(str(selector.get("key", "")))
    named = [f"Secret {name} (keys {', '.join(k)})" for name, k in keys.items()]
    return ", ".join(named) or "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: no Secret is named)"


def _call(action: Any, what: str) -> Any:
    try:
        return action()
    except Exception as e:  # noqa: BLE001 - boto3/botocore errors, imported lazily
        raise ArtifactError(f"{what} failed: {_reason(e)}") from e


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
