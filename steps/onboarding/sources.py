"""Resolving `model.source` into files on this machine (or a provider reference), with their manifest.

Forms: a directory under a model root (never escaping it, by `..` or by a symlink, the directory's own entries
included; a relative path resolves under the checkout, an absolute one must lie in a model root: the checkout,
the platform policy's `model_roots` or `LLMRELEASE_MODEL_ROOTS`, os.pathsep-separated), `s3://bucket/prefix`
(downloaded into `<work_dir>/cache/s3/...`, hashed as it streams; the endpoint comes from AWS_ENDPOINT_URL /
AWS_ENDPOINT_URL_S3, which boto3 reads), `openai://<model>` and `http(s)://host/v1#<model>` (an OpenAI-compatible
provider: no files, the digest is that of {base_url, model}).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from registry.errors import OnboardingError
from registry.retry import RetryPolicy, Service, describe_error
from steps.core.hashing import digest_of, hash_files, sha256_stream
from steps.release.records import FileEntry, ProviderRef

__all__ = [
    "MODEL_ROOTS_ENV",
    "OPENAI_BASE_URL",
    "S3Client",
    "Source",
    "manifest_digest",
    "model_roots",
    "resolve_source",
    "resolve_under_root",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"
MODEL_ROOTS_ENV = "LLMRELEASE_MODEL_ROOTS"
_ROOTS_FIX = f"add its directory to {MODEL_ROOTS_ENV} or to the platform policy's model_roots"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
_FORMS = "supported: a directory under the model root, s3://bucket/prefix, openai://<model>, https://host/v1#<model>"


class S3Client(Protocol):
    """The part of a boto3 S3 client onboarding uses."""

    def get_paginator(self, operation_name: str) -> Any: ...  # noqa: D102

    def get_object(self, *, Bucket: str, Key: str) -> Any: ...  # noqa: D102


@dataclass(frozen=True)
class Source:
    """A resolved model source."""

    kind: Literal["weights", "provider"]
    uri: str
    digest: str
    local_dir: Path | None = None
    files: list[FileEntry] = field(default_factory=list)
    provider: ProviderRef | None = None

    @property
    def provider_key(self) -> str | None:
        """`<host[:port]>/<model>`, what the policy's provider patterns match; None for weights."""
        if self.provider is None:
            return None
        return f"{urlsplit(self.provider.base_url).netloc}/{self.provider.model}"


def manifest_digest(files: list[FileEntry]) -> str:
    """`sha256:` + sha256 of the canonical JSON of the manifest (a list of {path, sha256, size}, by path)."""
    return digest_of([f.model_dump() for f in sorted(files, key=lambda f: f.path)])


def resolve_source(
    source: str, *, root: Path, work_dir: Path, s3: S3Client | None = None, roots: Sequence[Path] | None = None
) -> Source:
    """Resolve `model.source`.

    Args:
        source: The spec's `model.source`.
        root: The checkout: relative directories are resolved under it (and may not escape it).
        work_dir: The step's work dir; S3 downloads go to `<work_dir>/cache/s3/<bucket>/<prefix>`.
        s3: A boto3 S3 client; built from the environment when None and needed.
        roots: The model roots a local directory must lie in (`model_roots`); None: `model_roots(root)`, the
            checkout and `LLMRELEASE_MODEL_ROOTS`.

    Raises:
        OnboardingError: Unsupported scheme, missing path or one outside every root, unreadable bucket; names
            model.source (and the setting that adds a root).
    """
    match = _SCHEME.match(source)
    scheme = match.group(1).lower() if match else ""
    if not scheme:
        allowed = model_roots(root) if roots is None else list(roots)
        model_dir = resolve_under_root(source, root, "model.source", roots=allowed)
        if not model_dir.is_dir():
            raise OnboardingError(f"model.source {source!r}: {model_dir} is not a directory; point it at the model dir")
        home = next(r for r in (p.resolve() for p in allowed) if model_dir.is_relative_to(r))
        files = local_manifest(model_dir, home)
        return Source("weights", source, manifest_digest(files), local_dir=model_dir, files=files)
    if scheme == "s3":
        return _s3_source(source, work_dir, s3)
    if scheme in ("openai", "https", "http"):
        ref = _provider_ref(source, scheme)
        return Source("provider", source, digest_of(ref.model_dump()), provider=ref)
    raise OnboardingError(f"model.source {source!r}: unsupported scheme '{scheme}://' ({_FORMS})")


def model_roots(root: Path, configured: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where local model sources may be read from; real paths, each once.

    The checkout `root`, the platform policy's `model_roots` (`configured`), then `LLMRELEASE_MODEL_ROOTS`
    (os.pathsep-separated).

    Raises:
        OnboardingError: An entry of LLMRELEASE_MODEL_ROOTS is not an absolute path.
    """
    env = os.environ if environ is None else environ
    extra = [p.strip() for p in env.get(MODEL_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    relative = [p for p in extra if not Path(p).is_absolute()]
    if relative:
        raise OnboardingError(
            f"{MODEL_ROOTS_ENV}: {relative[0]!r} is not an absolute path; list absolute directories separated "
            f"by {os.pathsep!r}"
        )
    out: list[Path] = []
    for path in (root, *map(Path, configured), *map(Path, extra)):
        real = path.resolve()
        if real not in out:
            out.append(real)
    return out


def resolve_under_root(value: str, root: Path, field_name: str, *, roots: Sequence[Path] | None = None) -> Path:
    """The real path of `value` (relative: under `root`) inside one of `roots` (default: `root` alone).

    The path may not leave its root by `..`, by being absolute elsewhere, or through a symlink.

    Raises:
        OnboardingError: The path is outside every root or does not exist; names `field_name`.
    """
    root_real = root.resolve()
    allowed = [root_real] if roots is None else [r.resolve() for r in roots]
    normal = Path(os.path.normpath(root_real / value))
    home = next((r for r in allowed if normal.is_relative_to(r)), None)
    if home is None:
        if roots is None or not Path(value).is_absolute():
            raise OnboardingError(
                f"{field_name} {value!r} escapes the model root {root_real} (via '..' or an absolute path); "
                "use a path inside the root"
            )
        shown = ", ".join(map(str, allowed))
        raise OnboardingError(f"{field_name} {value!r} is outside every model root ({shown}); {_ROOTS_FIX}")
    real = normal.resolve()
    if not real.is_relative_to(home):
        raise OnboardingError(
            f"{field_name} {value!r} leads through a symlink to {real}, outside the model root {home}; "
            "copy the files under the root"
        )
    if not real.exists():
        raise OnboardingError(
            f"{field_name} {value!r}: {real} does not exist; fix the path (resolved under the model root {home})"
        )
    return real


def local_manifest(model_dir: Path, root_real: Path) -> list[FileEntry]:
    """Every file under `model_dir` with its sha256 and size, sorted by path; refuses links out of the root."""
    found: list[tuple[str, Path]] = []

    def fail(err: OSError) -> None:
        raise OnboardingError(f"model.source: cannot read {err.filename} ({err.strerror}); fix its permissions")

    for dirpath, dirnames, filenames in os.walk(model_dir, onerror=fail):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise OnboardingError(
                    f"model.source: {here / name} is a symlinked directory; replace it with a real directory"
                )
        for name in filenames:
            path = here / name
            if path.is_symlink() and not path.resolve().is_relative_to(root_real):
                raise OnboardingError(
                    f"model.source: {path} is a symlink to {path.resolve()}, outside the model root {root_real}; "
                    "copy the file into the model directory"
                )
            if not path.is_file():
                raise OnboardingError(
                    f"model.source: {path} is not a regular file (a broken symlink, FIFO or device); remove it"
                )
            found.append((path.relative_to(model_dir).as_posix(), path))
    if not found:
        raise OnboardingError(f"model.source: {model_dir} holds no files; point model.source at the model directory")
    found.sort()
    hashes = hash_files(p for _, p in found)
    return [FileEntry(path=rel, sha256=h, size=n) for (rel, _), (h, n) in zip(found, hashes, strict=True)]


def _provider_ref(source: str, scheme: str) -> ProviderRef:
    if scheme == "openai":
        base_url, model = OPENAI_BASE_URL, source[len("openai://") :]
    else:
        parts = urlsplit(source)
        if parts.username or parts.password:
            raise OnboardingError(
                f"model.source: credentials in the URL {parts.scheme}://...@{parts.hostname}; remove them "
                "and pass the API key as a secret environment variable"
            )
        if not parts.hostname or parts.query:
            raise OnboardingError(f"model.source {source!r}: expected https://host/v1#<model> ({_FORMS})")
        base_url = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))
        model = parts.fragment
    if not _MODEL_ID.match(model):
        raise OnboardingError(
            f"model.source {source!r}: missing or malformed model id {model!r}; write openai://<model> or "
            "https://host/v1#<model>"
        )
    return ProviderRef(base_url=base_url, model=model)


def _s3_source(source: str, work_dir: Path, s3: S3Client | None) -> Source:
    bucket, _, prefix = source[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or ".." in PurePosixPath(prefix).parts:
        raise OnboardingError(f"model.source {source!r}: expected s3://bucket/prefix without '..'")
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    objects = _s3_list(s3, bucket, prefix, source)
    dest = work_dir.absolute() / "cache" / "s3" / bucket / prefix
    partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        files = [_s3_download(s3, bucket, key, size, partial / rel, rel) for rel, key, size in objects]
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Source("weights", source, manifest_digest(files), local_dir=dest, files=files)


_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})  # this pod's disk, not S3


def _s3_list(s3: S3Client, bucket: str, prefix: str, source: str) -> list[tuple[str, str, int]]:
    """(relative path, key, size) of every object under the prefix, sorted by path."""
    from botocore.exceptions import BotoCoreError, ClientError

    def pages() -> list[Any]:
        return list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""))

    found: list[tuple[str, str, int]] = []
    try:
        for page in RetryPolicy.from_env().call(pages, service=_s3_service(bucket)):
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                rel = key[len(prefix) + 1 :] if prefix else key
                if key.endswith("/"):
                    continue  # a "folder" marker object
                if not rel or rel.startswith("/") or ".." in PurePosixPath(rel).parts:
                    raise OnboardingError(f"model.source {source!r}: object key {key!r} is not a safe relative path")
                found.append((rel, key, int(obj["Size"])))
    except (BotoCoreError, ClientError) as e:
        raise OnboardingError(
            f"model.source {source!r}: cannot list the bucket at {_endpoint()} ({describe_error(e)}); check the "
            "bucket, AWS_ENDPOINT_URL and the credentials"
        ) from e
    if not found:
        raise OnboardingError(f"model.source {source!r}: no objects under this prefix; upload the model or fix the URI")
    return sorted(found)


def _s3_download(s3: S3Client, bucket: str, key: str, size: int, target: Path, rel: str) -> FileEntry:
    from botocore.exceptions import BotoCoreError, ClientError

    target.parent.mkdir(parents=True, exist_ok=True)

    def fetch() -> tuple[str, int]:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(target, "wb") as sink:
            return sha256_stream(body, sink)

    try:
        digest, got = RetryPolicy.from_env().call(fetch, service=_s3_service(bucket))
    except OSError as e:
        if e.errno not in _LOCAL_ERRNOS:
            raise OnboardingError(f"model.source: download of s3://{bucket}/{key} failed ({e}); retry") from e
        raise OnboardingError(
            f"model.source: cannot write s3://{bucket}/{key} to {target} ({e.strerror}): free space there or set "
            "the step's work dir elsewhere, then retry"
        ) from e
    except (BotoCoreError, ClientError) as e:
        raise OnboardingError(
            f"model.source: download of s3://{bucket}/{key} failed ({describe_error(e)}); check AWS_ENDPOINT_URL "
            "and the credentials, then retry"
        ) from e
    if got != size:
        raise OnboardingError(f"model.source: s3://{bucket}/{key} gave {got} bytes, the listing said {size}; retry")
    return FileEntry(path=rel, sha256=digest, size=got)


def _endpoint() -> str:
    """The S3 endpoint boto3 uses (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS's own)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"


def _s3_service(bucket: str) -> Service:
    """S3 (the endpoint of AWS_ENDPOINT_URL) for the retry policy's final line."""
    return Service(
        f"S3 ({_endpoint()})", f"s3://{bucket}", "check AWS_ENDPOINT_URL and the credentials", OnboardingError
    )
