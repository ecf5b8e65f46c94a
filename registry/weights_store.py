"""The weights store: onboarded weights at an immutable, digest-addressed location that every pod can read.

Layout under the store's root: `weights/sha256/<hex>/manifest.json` (the onboarding manifest, a
`registry.integrity.Manifest` hashing to `sha256:<hex>`) and `weights/sha256/<hex>/files/<path>` (each file). The
location `<root>/weights/sha256/<hex>` is the weights URI the onboard step records and the register step gives the
model version as its source. The root is `s3://$LLMRELEASE_S3_BUCKET` (boto3 reads the endpoint and credentials
from its usual environment: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), or `file://$LLMRELEASE_HOME/store` where
no bucket is configured (unit tests, `llmrelease run` on one machine).

Writing (`publish`): every file is hashed as it is uploaded and refused unless it has the manifest's sha256 (the
bytes stored are the bytes onboarded); the manifest is written last and marks the location complete. First
writer wins: a writer that finds the manifest already there, equal to its own, uploads nothing (a file missing
from the location is repaired); a manifest for the same digest with other content is an `IntegrityError`.
Reading (`read_manifest`, `download`): the manifest must hash to the digest the caller expects; the files are
then checked against it by the caller (`registry.integrity.verify_folder`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict

from registry.errors import IntegrityError, OnboardingError
from registry.integrity import Manifest
from registry.retry import RetryPolicy, Service, describe_error
from registry.settings import llmrelease_home

__all__ = [
    "BUCKET_ENV",
    "Published",
    "S3Like",
    "WeightsStore",
    "is_weights_uri",
    "store_root",
]

BUCKET_ENV = "LLMRELEASE_S3_BUCKET"
_MANIFEST = "manifest.json"
_FILES = "files"
_URI = re.compile(r"^(?P<root>[a-z0-9]+://.+?)/weights/sha256/(?P<hex>[0-9a-f]{64})/?$")
_CHUNK = 8 * 1024 * 1024


class S3Like(Protocol):
    """The part of a boto3 S3 client the store uses."""

    def get_object(self, **kwargs: Any) -> Any: ...  # noqa: D102

    def put_object(self, **kwargs: Any) -> Any: ...  # noqa: D102

    def delete_object(self, **kwargs: Any) -> Any: ...  # noqa: D102

    def get_paginator(self, operation_name: str) -> Any: ...  # noqa: D102

    def upload_fileobj(self, Fileobj: Any, Bucket: str, Key: str) -> Any: ...  # noqa: D102, N803

    def download_file(self, Bucket: str, Key: str, Filename: str) -> Any: ...  # noqa: D102, N803


class Published(BaseModel):
    """What `WeightsStore.publish` did: the weights URI and the files it uploaded (none when reused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    uploaded: list[str]
    reused: bool


def store_root(environ: Mapping[str, str] | None = None) -> str:
    """`s3://$LLMRELEASE_S3_BUCKET`, else `file://<LLMRELEASE_HOME>/store`."""
    env = os.environ if environ is None else environ
    bucket = env.get(BUCKET_ENV, "").strip().strip("/")
    return f"s3://{bucket}" if bucket else (llmrelease_home(env) / "store").as_uri()


def is_weights_uri(uri: str) -> bool:
    """Whether `uri` is a location of the weights store (`<root>/weights/sha256/<hex>`)."""
    return bool(_URI.match(uri)) and uri.startswith(("s3://", "file://"))


class WeightsStore:
    """The digest-addressed weights store at `root` (s3://bucket[/prefix] or file:///path)."""

    def __init__(self, root: str, *, s3: S3Like | None = None) -> None:
        """A store at `root`; `s3` is a boto3 S3 client (built from the environment when needed and None)."""
        parts = urlsplit(root)
        if parts.scheme not in ("s3", "file") or (parts.scheme == "s3" and not parts.netloc):
            raise OnboardingError(
                f"weights store root {root!r}: expected s3://bucket[/prefix] or file:///path: set {BUCKET_ENV}"
            )
        self.root = root.rstrip("/")
        self._backend: _Backend = (
            _S3(parts.netloc, parts.path.strip("/"), s3, self.root)
            if parts.scheme == "s3"
            else _Files(Path(unquote(parts.path)))
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, s3: S3Like | None = None) -> WeightsStore:
        """The store of this environment (`store_root`)."""
        return cls(store_root(environ), s3=s3)

    @classmethod
    def for_uri(cls, uri: str, *, s3: S3Like | None = None) -> WeightsStore:
        """The store holding weights URI `uri`.

        Raises:
            OnboardingError: `uri` is not a weights store location.
        """
        match = _URI.match(uri)
        if not match or not is_weights_uri(uri):
            raise OnboardingError(
                f"weights URI {uri!r} is not a weights store location (<root>/weights/sha256/<hex>): "
                "re-run the onboard step, which uploads the weights"
            )
        return cls(match.group("root"), s3=s3)

    def location(self, digest: str) -> str:
        """The weights URI of `digest` in this store."""
        return f"{self.root}/{_key(digest)}"

    def publish(self, folder: Path, manifest: Manifest) -> Published:
        """Upload the files of `folder` that `manifest` lists, then the manifest; nothing when already there.

        Raises:
            IntegrityError: A file's bytes differ from the manifest while uploading (nothing is marked complete),
                or the location holds another manifest for the same digest.
            OnboardingError: The store cannot be read or written.
        """
        key, uri = _key(manifest.digest), self.location(manifest.digest)
        stored = self._stored_manifest(key, uri, manifest.digest)
        present = self._backend.sizes(f"{key}/{_FILES}/")
        todo = [f for f in manifest.files if present.get(f.path) != f.size]
        for entry in todo:
            self._backend.put_file(folder / entry.path, f"{key}/{_FILES}/{entry.path}", entry.sha256, entry.size)
        if stored is None:
            text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
            self._backend.put_bytes(f"{key}/{_MANIFEST}", text.encode("utf-8"))
        return Published(uri=uri, uploaded=[f.path for f in todo], reused=stored is not None)

    def read_manifest(self, uri: str, expected: str) -> Manifest:
        """The manifest at weights URI `uri`, checked to hash to `expected`.

        Raises:
            OnboardingError: There is no manifest at `uri` (the weights were never uploaded there).
            IntegrityError: The manifest is malformed or hashes to another digest (both digests named).
        """
        found = self._stored_manifest(self._key_of(uri), uri, expected)
        if found is None:
            raise OnboardingError(
                f"weights {uri} have no {_MANIFEST} in the store: re-run the onboard step (it uploads the weights)"
            )
        return found

    def check(self, uri: str, manifest: Manifest) -> None:
        """Raise OnboardingError unless every file of `manifest` is at `uri` with its size."""
        present = self._backend.sizes(f"{self._key_of(uri)}/{_FILES}/")
        for entry in manifest.files:
            size = present.get(entry.path)
            if size != entry.size:
                what = "is missing" if size is None else f"has {size} bytes, the manifest says {entry.size}"
                raise OnboardingError(
                    f"weights file {entry.path} at {uri}/{_FILES} {what}: re-run the onboard step to upload it"
                )

    def download(self, uri: str, manifest: Manifest, dest: Path) -> Path:
        """Download the files of `manifest` from `uri` into `dest/files`; returns that folder (unverified)."""
        key, folder = self._key_of(uri), dest / _FILES
        for entry in manifest.files:
            target = folder / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            self._backend.get_file(f"{key}/{_FILES}/{entry.path}", target)
        return folder

    def _key_of(self, uri: str) -> str:
        match = _URI.match(uri)
        if not match or match.group("root").rstrip("/") != self.root:
            raise OnboardingError(f"weights URI {uri!r} is not in the store {self.root}: pass a URI of this store")
        return f"weights/sha256/{match.group('hex')}"

    def _stored_manifest(self, key: str, uri: str, expected: str) -> Manifest | None:
        raw = self._backend.read(f"{key}/{_MANIFEST}")
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise IntegrityError(
                f"weights manifest {uri}/{_MANIFEST} is not JSON ({e}): delete {uri} and re-run the onboard step"
            ) from e
        return Manifest.load(data, expected=expected, where=f"{uri}/{_MANIFEST}")


def _key(digest: str) -> str:
    hex_digest = digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
        raise OnboardingError(f"weights digest {digest!r} is not sha256:<64 hex>: re-run the onboard step")
    return f"weights/sha256/{hex_digest}"


class _Backend(Protocol):
    def read(self, key: str) -> bytes | None: ...

    def sizes(self, prefix: str) -> dict[str, int]: ...

    def put_file(self, src: Path, key: str, sha256: str, size: int) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, target: Path) -> None: ...


class _HashingReader:
    """A read-only, non-seekable file object that hashes and counts what is read through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


def _check_copied(src: Path, reader: _HashingReader, sha256: str, size: int) -> None:
    found = reader.sha256.hexdigest()
    if found != sha256 or reader.size != size:
        raise IntegrityError(
            f"weights file {src} changed since onboarding: expected sha256:{sha256} ({size} bytes), found "
            f"sha256:{found} ({reader.size} bytes): nothing was published; re-run the onboard step"
        )


def _open(src: Path) -> BinaryIO:
    try:
        return open(src, "rb")
    except OSError as e:
        raise OnboardingError(f"weights file {src} is unreadable ({e.strerror}): re-run the onboard step") from e


class _Files:
    """A store on this machine's disk: every object written to a temporary file, then renamed into place."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def read(self, key: str) -> bytes | None:
        try:
            return (self._root / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OnboardingError(f"weights store {self._root / key} is unreadable ({e.strerror}): check it") from e

    def sizes(self, prefix: str) -> dict[str, int]:
        base = self._root / prefix
        return {p.relative_to(base).as_posix(): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def put_file(self, src: Path, key: str, sha256: str, size: int) -> None:
        with _open(src) as fh:
            reader = _HashingReader(fh)
            self._atomic(key, lambda out: shutil.copyfileobj(reader, out, _CHUNK))  # type: ignore[misc]
        try:
            _check_copied(src, reader, sha256, size)
        except IntegrityError:
            (self._root / key).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda out: out.write(data))

    def get_file(self, key: str, target: Path) -> None:
        try:
            shutil.copyfile(self._root / key, target)
        except OSError as e:
            raise OnboardingError(
                f"weights file {self._root / key} is unreadable ({e.strerror}): re-run the onboard step"
            ) from e

    def _atomic(self, key: str, write: Any) -> None:
        target = self._root / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    write(out)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as e:
            raise OnboardingError(f"cannot write {target} ({e.strerror}): check the disk and its permissions") from e


class _S3:
    """A store in an S3 bucket (any S3 API: AWS, MinIO, moto), every call under the retry policy."""

    def __init__(self, bucket: str, prefix: str, client: S3Like | None, root: str) -> None:
        self._bucket, self._prefix, self._client, self._root = bucket, prefix, client, root

    @property
    def client(self) -> S3Like:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _full(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _call(self, what: str, fn: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        check = "check AWS_ENDPOINT_URL_S3 and the credentials"
        service = Service(f"S3 ({endpoint})", self._root, check, OnboardingError)
        try:
            return RetryPolicy.from_env().call(fn, service=service)
        except (BotoCoreError, ClientError) as e:
            raise OnboardingError(
                f"{what} in s3://{self._bucket} failed ({describe_error(e, 200)}): check {BUCKET_ENV}, "
                "AWS_ENDPOINT_URL_S3 and the credentials"
            ) from e

    def read(self, key: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                return bytes(self.client.get_object(Bucket=self._bucket, Key=self._full(key))["Body"].read())
            except Exception as e:
                if getattr(e, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        result: bytes | None = self._call(f"reading {self._full(key)}", get)
        return result

    def sizes(self, prefix: str) -> dict[str, int]:
        full = self._full(prefix)

        def listing() -> dict[str, int]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=full)
            return {o["Key"][len(full) :]: int(o["Size"]) for page in pages for o in page.get("Contents", [])}

        found: dict[str, int] = self._call(f"listing {full}", listing)
        return found

    def put_file(self, src: Path, key: str, sha256: str, size: int) -> None:
        full = self._full(key)

        def upload() -> _HashingReader:
            with _open(src) as fh:
                reader = _HashingReader(fh)
                self.client.upload_fileobj(reader, self._bucket, full)
            return reader

        reader: _HashingReader = self._call(f"uploading {src} to {full}", upload)
        try:
            _check_copied(src, reader, sha256, size)
        except IntegrityError:
            self._call(f"deleting {full}", lambda: self.client.delete_object(Bucket=self._bucket, Key=full))
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        self._call(f"writing {full}", lambda: self.client.put_object(Bucket=self._bucket, Key=full, Body=data))

    def get_file(self, key: str, target: Path) -> None:
        full = self._full(key)
        self._call(f"downloading {full}", lambda: self.client.download_file(self._bucket, full, str(target)))
