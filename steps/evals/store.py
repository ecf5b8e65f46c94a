"""Durable eval state: the result cache and the eval shards, in S3 when a bucket is configured, else on local disk.

An `EvalStore` is a flat store of small text objects (JSON, JSONL) under one root:

* `s3://$LLMRELEASE_S3_BUCKET/evals/<area>` when the bucket is set (every pod on every node sees the same state:
  a retried or resumed eval pod, and the parallel batch-eval and safety pods, share it); boto3 reads the
  endpoint and credentials from its usual environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), which the
  platform ConfigMap and Secrets give every step;
* else a local folder (unit tests, plain runs on one machine): the cache under `$LLMRELEASE_HOME/eval-cache`, the
  shards under `<work_dir>/eval-shards`, as before.

Writes are whole objects: `write` replaces (a temporary sibling renamed into place on disk; one PUT in S3) and
`create` is first-writer-wins: S3's conditional PUT (`If-None-Match: *`; where a server does not implement it,
a PUT then a read-back), on disk a hard link of the written temporary file (fails when the name exists).
`replace` is compare-and-swap against the tag `read_tagged` gave: S3's `If-Match: <ETag>`, on disk a rename
under an exclusive lock of the folder after checking the file is still the one read. A reader never sees half
an object. Every S3 call runs under the one retry policy (`registry.retry`); a call that
keeps failing is one `EvalError` line naming the object and what to check.

Why not `registry.weights_store`'s plumbing: its backends are private, speak in weights terms (`OnboardingError`,
"re-run the onboard step") and have no first-writer-wins create; this module reuses its bucket setting
(`BUCKET_ENV`) and its S3 client protocol (`S3Like`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from registry.retry import RetryPolicy, Service, Transient, describe_error
from registry.weights_store import BUCKET_ENV, S3Like
from steps.evals.engines.base import EvalError

__all__ = ["EVALS_PREFIX", "EvalStore", "eval_store"]

EVALS_PREFIX = "evals"
_LOST_RACE = frozenset({"PreconditionFailed", "412"})
_RACING = frozenset({"ConditionalRequestConflict", "409"})


def eval_store(
    area: str,
    local: str | Path,
    label: str,
    environ: Mapping[str, str] | None = None,
    *,
    s3: S3Like | None = None,
) -> EvalStore:
    """The store of `area` ("results", "shards"): `s3://$LLMRELEASE_S3_BUCKET/evals/<area>`, else `local`.

    Args:
        area: The sub-prefix under `evals/` in the bucket.
        local: The folder used where no bucket is configured.
        label: What the store holds, for messages ("eval result cache").
        environ: The environment to read the bucket from (default: this process's).
        s3: A boto3 S3 client (built from the environment on first use when None).
    """
    env = os.environ if environ is None else environ
    bucket = env.get(BUCKET_ENV, "").strip().strip("/")
    if bucket:
        return EvalStore(f"s3://{bucket}/{EVALS_PREFIX}/{area}", label, s3=s3)
    return EvalStore(Path(local), label)


class EvalStore:
    """Small text objects under `root` (`s3://bucket/prefix` or a local folder); see the module docs.

    Args:
        root: `s3://bucket[/prefix]`, or a local folder (a path, or a string without a scheme).
        label: What the store holds, for messages.
        s3: A boto3 S3 client for s3:// roots (built from the environment on first use when None).
    """

    def __init__(self, root: str | Path, label: str = "eval state", *, s3: S3Like | None = None) -> None:
        self.label = label
        text = str(root)
        if text.startswith("s3://"):
            bucket, _, prefix = text.removeprefix("s3://").partition("/")
            if not bucket:
                raise EvalError(f"{label} root {text!r}: expected s3://bucket[/prefix]: set {BUCKET_ENV}")
            self.root = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
            self._backend: _Folder | _Bucket = _Bucket(bucket, prefix.strip("/"), s3, self)
        else:
            self.root = str(Path(root))
            self._backend = _Folder(Path(root), self)

    @property
    def is_local(self) -> bool:
        """Whether the store is a folder on this machine (no bucket configured)."""
        return isinstance(self._backend, _Folder)

    def child(self, name: str) -> EvalStore:
        """The store under `<root>/<name>` (same client, same label)."""
        if isinstance(self._backend, _Bucket):
            return EvalStore(f"{self.root}/{name}", self.label, s3=self._backend.client_or_none)
        return EvalStore(Path(self.root) / name, self.label)

    def location(self, name: str) -> str:
        """Where object `name` lives: `s3://bucket/prefix/<name>` or `<folder>/<name>`."""
        return f"{self.root}/{name}" if not self.is_local else str(Path(self.root) / name)

    def read(self, name: str) -> str | None:
        """The object's text, or None when there is none."""
        return self._backend.read(name)

    def write(self, name: str, text: str) -> None:
        """Store `text` as `name`, replacing what is there (readers see the old or the new object, never half)."""
        self._backend.write(name, text)

    def create(self, name: str, text: str) -> bool:
        """Store `text` as `name` unless an object of that name exists; whether this call stored it."""
        return self._backend.create(name, text)

    def read_tagged(self, name: str) -> tuple[str, str] | None:
        """The object's text and a tag of this version of it (for `replace`), or None when there is none."""
        return self._backend.read_tagged(name)

    def replace(self, name: str, text: str, tag: str) -> bool:
        """Store `text` as `name` only if the object is still the version `tag` names; whether this call did."""
        return self._backend.replace(name, text, tag)

    def delete(self, name: str) -> None:
        """Remove `name` (nothing when it is not there)."""
        self._backend.delete(name)


class _Folder:
    """A store on this machine's disk."""

    def __init__(self, root: Path, store: EvalStore) -> None:
        self._root, self._store = root, store

    def read(self, name: str) -> str | None:
        try:
            return (self._root / name).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise EvalError(
                f"{self._store.label} {self._root / name}: cannot read it ({describe_error(e, 120)}): "
                "delete the file and re-run"
            ) from e

    def write(self, name: str, text: str) -> None:
        def rename(tmp: str, target: Path) -> bool:
            os.replace(tmp, target)
            return True

        self._atomic(name, text, rename)

    def create(self, name: str, text: str) -> bool:
        def link(tmp: str, target: Path) -> bool:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True

        return self._atomic(name, text, link)

    def delete(self, name: str) -> None:
        (self._root / name).unlink(missing_ok=True)

    def read_tagged(self, name: str) -> tuple[str, str] | None:
        try:
            with open(self._root / name, encoding="utf-8") as f:
                return f.read(), _file_tag(os.fstat(f.fileno()))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def replace(self, name: str, text: str, tag: str) -> bool:
        def swap(tmp: str, target: Path) -> bool:
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                fcntl.flock(folder, fcntl.LOCK_EX)
                try:
                    current = _file_tag(os.stat(target))
                except FileNotFoundError:
                    return False
                if current != tag:
                    return False
                os.replace(tmp, target)
                return True
            finally:
                os.close(folder)  # releases the lock

        return self._atomic(name, text, swap)

    def _atomic(self, name: str, text: str, place: Callable[[str, Path], bool]) -> bool:
        """Write `text` to a temporary sibling, then `place` it (rename or link); the temporary file never stays."""
        target = self._root / name
        tmp = ""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:60]}.", suffix=".tmp", dir=target.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return place(tmp, target)
        except OSError as e:
            why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or type(e).__name__)
            raise EvalError(
                f"{self._store.label} {target}: cannot write it ({why}): free space under {self._root} or point "
                "LLMRELEASE_HOME at a larger volume, then re-run (nothing half-written was kept)"
            ) from e
        finally:
            if tmp:
                Path(tmp).unlink(missing_ok=True)


class _Bucket:
    """A store in an S3 bucket (AWS, MinIO, moto), every call under the retry policy."""

    def __init__(self, bucket: str, prefix: str, client: S3Like | None, store: EvalStore) -> None:
        self._bucket, self._prefix, self._client, self._store = bucket, prefix, client, store
        self._conditional = True

    @property
    def client_or_none(self) -> S3Like | None:
        return self._client

    @property
    def client(self) -> S3Like:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def _call(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        where = self._store.location(name)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        check = f"check AWS_ENDPOINT_URL_S3, {BUCKET_ENV} and the S3 credentials"
        try:
            return RetryPolicy.from_env().call(fn, service=Service(f"S3 ({endpoint})", where, check, EvalError))
        except (BotoCoreError, ClientError) as e:
            raise EvalError(f"{self._store.label} {where}: {what} failed ({describe_error(e, 200)}): {check}") from e

    def read(self, name: str) -> str | None:
        def get() -> str | None:
            try:
                body = self.client.get_object(Bucket=self._bucket, Key=self._key(name))["Body"].read()
            except Exception as e:
                if _code(e) in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(body).decode("utf-8")

        found: str | None = self._call(name, "reading", get)
        return found

    def write(self, name: str, text: str) -> None:
        data = text.encode("utf-8")
        self._call(name, "writing", lambda: self.client.put_object(Bucket=self._bucket, Key=self._key(name), Body=data))

    def create(self, name: str, text: str) -> bool:
        if self._conditional:
            created = self._call(name, "writing", lambda: self._put_if_absent(name, text.encode("utf-8")))
            if created is not None:
                return bool(created)
            self._conditional = False  # the server does not implement If-None-Match: write, then read back
        if self.read(name) is not None:
            return False
        self.write(name, text)
        return self.read(name) == text

    def _put_if_absent(self, name: str, data: bytes) -> bool | None:
        """True: stored; False: the object exists; None: the server does not implement conditional PUTs."""
        try:
            self.client.put_object(Bucket=self._bucket, Key=self._key(name), Body=data, IfNoneMatch="*")
        except Exception as e:
            code = _code(e)
            if code in _LOST_RACE:
                return False
            if code in _RACING:  # another conditional PUT of this key is in flight: ask again (it may fail)
                raise Transient(f"conditional PUT of {self._key(name)} raced another") from e
            if code in ("NotImplemented", "501"):
                return None
            raise
        return True

    def delete(self, name: str) -> None:
        self._call(name, "deleting", lambda: self.client.delete_object(Bucket=self._bucket, Key=self._key(name)))

    def read_tagged(self, name: str) -> tuple[str, str] | None:
        def get() -> tuple[str, str] | None:
            try:
                found = self.client.get_object(Bucket=self._bucket, Key=self._key(name))
            except Exception as e:
                if _code(e) in ("NoSuchKey", "404"):
                    return None
                raise
            return bytes(found["Body"].read()).decode("utf-8"), str(found["ETag"])

        tagged: tuple[str, str] | None = self._call(name, "reading", get)
        return tagged

    def replace(self, name: str, text: str, tag: str) -> bool:
        data = text.encode("utf-8")

        def put() -> bool | None:
            try:
                self.client.put_object(Bucket=self._bucket, Key=self._key(name), Body=data, IfMatch=tag)
            except Exception as e:
                code = _code(e)
                if code in _LOST_RACE or code in ("NoSuchKey", "404"):
                    return False
                if code in _RACING:
                    raise Transient(f"conditional PUT of {self._key(name)} raced another") from e
                if code in ("NotImplemented", "501"):
                    return None
                raise
            return True

        swapped = self._call(name, "writing", put)
        if swapped is not None:
            return bool(swapped)
        found = self.read_tagged(name)  # no If-Match on this server: check, write, read back
        if found is None or found[1] != tag:
            return False
        self.write(name, text)
        return self.read(name) == text


def _file_tag(st: os.stat_result) -> str:
    """A version tag of a local file: every write renames a new inode into place."""
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _code(error: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(error, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
