"""What an evidence bundle is made of: its file names, the environment variables of its keys, and its error.

The MLflow names it is stored under are in `registry.tags`; files are hashed with `steps.core.hashing`.
"""

from registry.errors import ReleaseError

__all__ = [
    "DIGEST_FILE",
    "ENVELOPE",
    "EXPECTED_KINDS",
    "KEY_ENV",
    "KEY_SECRET",
    "KEY_SECRET_KEY",
    "MANIFEST",
    "OUTSIDE_MANIFEST",
    "PUBKEY_ENV",
    "REPORT",
    "RESULT_FILES",
    "SIGNED_ENVIRONMENTS",
    "STATEMENT",
    "EvidenceError",
]

KEY_ENV, PUBKEY_ENV = "LLMRELEASE_EVIDENCE_KEY", "LLMRELEASE_EVIDENCE_PUBKEY"  # the key: a PEM path or PEM text
KEY_SECRET, KEY_SECRET_KEY = "llmrelease-evidence-key", "ed25519.pem"  # the Secret the exit handler's KEY_ENV is from
SIGNED_ENVIRONMENTS = frozenset({"stage", "prod"})  # evidence must be signed there: unsigned fails the exit handler
MANIFEST, DIGEST_FILE, ENVELOPE, STATEMENT, REPORT = (
    "manifest.json",
    "manifest.sha256",
    "statement.dsse.json",  # the DSSE envelope of statement.json (steps.evidence.dsse); in the manifest
    "statement.json",
    "report.html",
)
OUTSIDE_MANIFEST = frozenset({MANIFEST, DIGEST_FILE, REPORT})
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
