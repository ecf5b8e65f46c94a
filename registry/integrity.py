"""Weights integrity: the manifest (every file with its sha256 and size) and the checks of bytes against it.

The manifest is digest-addressed: its digest (`sha256:` of the canonical JSON of its files, sorted by path) is the
weights digest the onboard step records and the register step tags every version with (`llmrelease.digest`). So a
manifest fetched from anywhere is checked against the version's tag before its file digests are trusted, and
files are then checked against the manifest. The onboard step uploads the weights to the digest-addressed weights
store, hashing every file as it goes (registry/weights_store.py); register checks the store's manifest against the
record's digest; the model cache checks what it downloaded before publishing it (steps/evals/weights.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from registry.errors import IntegrityError

__all__ = [
    "MANIFEST_ARTIFACT",
    "FileDigest",
    "Manifest",
    "ManifestFile",
    "check_manifest_digest",
    "manifest_digest",
    "verify_folder",
]

MANIFEST_ARTIFACT = "onboarding/manifest.json"  # in the version's onboarding run (registry/facade.py logs it)
_CHUNK_BYTES = 8 * 1024 * 1024


class FileDigest(Protocol):
    """One manifest entry: a POSIX path relative to the weights folder, its hex sha256 and its size in bytes."""

    @property
    def path(self) -> str: ...  # noqa: D102

    @property
    def sha256(self) -> str: ...  # noqa: D102

    @property
    def size(self) -> int: ...  # noqa: D102


class ManifestFile(BaseModel):
    """One file of a manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str
    size: int


class Manifest(BaseModel):
    """A weights manifest whose files hash to `digest` (checked by `Manifest.load`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    digest: str
    files: list[ManifestFile]

    @classmethod
    def load(cls, raw: Any, *, expected: str, where: str) -> Manifest:
        """Parse a manifest and check that its files hash to `expected` (the version's digest tag).

        Raises:
            IntegrityError: The manifest is malformed or its files hash to another digest; names both digests.
        """
        try:
            manifest = cls.model_validate(raw)
        except ValidationError as e:
            raise IntegrityError(
                f"weights manifest {where} is malformed ({e.errors()[0]['msg']}): re-register the model"
            ) from e
        check_manifest_digest(manifest.files, expected, where=f"weights manifest {where}")
        return manifest


def manifest_digest(files: Iterable[FileDigest]) -> str:
    """`sha256:` + sha256 of the canonical JSON of the files ({path, sha256, size}), sorted by path."""
    entries = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in sorted(files, key=lambda f: f.path)]
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def check_manifest_digest(files: Iterable[FileDigest], expected: str, *, where: str) -> None:
    """Raise IntegrityError unless `files` hash to the manifest digest `expected`."""
    found = manifest_digest(files)
    if found != expected:
        raise IntegrityError(
            f"{where}: expected digest {expected}, found {found}: the file list was altered after onboarding; "
            "re-run the onboard step"
        )


def verify_folder(
    folder: Path, files: Sequence[FileDigest], *, what: str, fix: str, ignore: Collection[str] = ()
) -> None:
    """Check that `folder` holds exactly the manifest's files, each with its sha256 (hashed on a few threads).

    Args:
        folder: The weights folder.
        files: The manifest's files.
        what: Names the weights in messages, e.g. "model 'demo-qa' at /models/qa".
        fix: What to do about a mismatch, the end of the message.
        ignore: Top-level names in `folder` that are not weights (markers).

    Raises:
        IntegrityError: A file is missing, unreadable, extra or has other bytes; one line naming the file and, for
            other bytes, the expected and found sha256.
    """
    present = _files_under(folder, ignore)
    wanted = {f.path: f for f in files}
    extra = sorted(present - wanted.keys())
    if extra:
        raise IntegrityError(f"weights file {extra[0]} of {what} is not in the manifest ({len(extra)} such): {fix}")
    missing = sorted(wanted.keys() - present)
    if missing:
        raise IntegrityError(
            f"weights file {missing[0]} of {what} is missing (expected sha256:{wanted[missing[0]].sha256}): {fix}"
        )
    found = _hash_all([folder / f.path for f in files])
    bad = [(f, got) for f, got in zip(files, found, strict=True) if got != f.sha256]
    if bad:
        f, got = bad[0]
        more = f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""
        raise IntegrityError(
            f"weights file {f.path} of {what}: expected sha256:{f.sha256}, found sha256:{got}{more}: {fix}"
        )


def _files_under(folder: Path, ignore: Collection[str]) -> set[str]:
    """Every file under `folder` as a POSIX path relative to it (directory symlinks are not followed)."""
    found: set[str] = set()

    def fail(err: OSError) -> None:
        raise IntegrityError(f"weights folder {folder} is unreadable ({err.strerror}: {err.filename}): check it")

    for dirpath, _dirs, names in os.walk(folder, onerror=fail):
        here = Path(dirpath)
        for name in names:
            rel = (here / name).relative_to(folder).as_posix()
            if rel not in ignore:
                found.add(rel)
    return found


def _hash_all(paths: list[Path]) -> list[str]:
    if len(paths) <= 1:
        return [_sha256_file(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, len(paths))) as pool:
        return list(pool.map(_sha256_file, paths))


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read into one reused buffer (the same loop as steps/core/hashing.py)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as fh:
            buf = bytearray(min(_CHUNK_BYTES, os.fstat(fh.fileno()).st_size + 1))  # small files: small buffer
            view = memoryview(buf)
            while n := fh.readinto(buf):
                digest.update(view[:n])
    except OSError as e:
        raise IntegrityError(f"weights file {path} is unreadable ({e.strerror}): check its permissions") from e
    return digest.hexdigest()
