"""Hashing for onboarding: files, streams and canonical JSON, with hashlib (OpenSSL, SHA extensions).

Files are read with `readinto` into one reused 8 MiB buffer (no per-chunk allocation); hashlib releases the GIL
on large updates, so several files hash in parallel threads. See benchmarks/onboard_hashing.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Protocol

__all__ = ["CHUNK_BYTES", "Readable", "canonical_json", "digest_of", "hash_files", "sha256_file", "sha256_stream"]

CHUNK_BYTES = 8 * 1024 * 1024


class Readable(Protocol):
    """Anything with `read(n)`: a file, or a boto3 StreamingBody."""

    def read(self, amt: int = ..., /) -> bytes: ...  # noqa: D102


def sha256_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, int]:
    """The hex sha256 and size in bytes of a file, read in `chunk_bytes` chunks."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def sha256_stream(source: Readable, sink: BinaryIO | None = None, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, int]:
    """Hash a stream as it is read, copying it to `sink` if given; returns (hex sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(chunk_bytes):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def hash_files(paths: Iterable[Path], workers: int | None = None) -> list[tuple[str, int]]:
    """`sha256_file` of each path, in order, hashed on a small thread pool."""
    items = list(paths)
    if len(items) <= 1:
        return [sha256_file(p) for p in items]
    count = workers or min(4, os.cpu_count() or 1, len(items))
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(sha256_file, items))


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def digest_of(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()
