"""What an evidence bundle is made of: its file names, the environment variables of its keys, and its error.

The MLflow names it is stored under are in `registry.tags`; files are hashed with `steps.core.hashing`.
"""

from registry.errors import ReleaseError

__all__ = [
    "DIGEST_FILE",
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
]

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
