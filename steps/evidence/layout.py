"""What an evidence bundle is made of: its file names, the names it is stored under, its error and file digest."""

import hashlib
from pathlib import Path

from registry.errors import ReleaseError

__all__ = [
    "APPROVAL_TAG_PREFIX",
    "DIGEST_FILE",
    "EVIDENCE_EXPERIMENT",
    "EVIDENCE_TAG",
    "EXPECTED_KINDS",
    "KEY_ENV",
    "MANIFEST",
    "OUTSIDE_MANIFEST",
    "PUBKEY_ENV",
    "REPORT",
    "RESULT_FILES",
    "SIGNATURE",
    "STATEMENT",
    "EvidenceError",
    "sha256_file",
]

EVIDENCE_EXPERIMENT = "llmrelease-evidence"
EVIDENCE_TAG = "llmrelease.evidence"
APPROVAL_TAG_PREFIX = "llmrelease.approval."
KEY_ENV, PUBKEY_ENV = "LLMRELEASE_EVIDENCE_KEY", "LLMRELEASE_EVIDENCE_PUBKEY"
MANIFEST, DIGEST_FILE, SIGNATURE, STATEMENT, REPORT = (
    "manifest.json",
    "manifest.sha256",
    "manifest.sig",
    "statement.json",
    "report.html",
)
OUTSIDE_MANIFEST = frozenset({MANIFEST, DIGEST_FILE, SIGNATURE, REPORT})
EXPECTED_KINDS = ("quality", "safety", "gate", "latency", "canary")
RESULT_FILES = {
    "quality": "quality-report.json",
    "safety": "safety-report.json",
    "eval": "eval-report.json",
    "gate": "gate-decision.json",
    "latency": "latency-report.json",
    "canary": "canary-log.json",
}


class EvidenceError(ReleaseError):
    """An evidence bundle is missing, changed, or its signature does not verify; names the file at fault."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
