"""Verifying an evidence bundle: recompute every digest and check the DSSE signature, naming the file at fault.

Digests alone prove a bundle is self-consistent, not where it came from: anyone can rewrite a file together with
the manifest and its digest. Provenance is anchored by the digest the registry recorded when the run stored the
bundle (`expected_digest`), or by a DSSE signature that verifies with a trusted public key *and* whose signed
statement names the digest of every other file of the bundle. `Verified.anchored` says which; "" means neither.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from steps.core.hashing import sha256_file
from steps.evidence.dsse import load_public_key, verify_envelope
from steps.evidence.layout import DIGEST_FILE, ENVELOPE, MANIFEST, OUTSIDE_MANIFEST, STATEMENT, EvidenceError

__all__ = ["Verified", "verify_bundle"]


class Verified(BaseModel):
    """The outcome of a successful `verify_bundle`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bundle: str
    digest: str
    files: int
    signature: str  # "valid (keyid ...)", "absent", or "present, not checked (no public key given)"
    anchored: str = ""  # "registry digest", "signature", both joined by " and ", or "" (self-consistent only)


def _check_files(bundle: Path, manifest: dict[str, Any]) -> int:
    listed = {f["path"]: f for f in manifest.get("files", [])}
    for rel, entry in listed.items():
        path = bundle / rel
        if not path.is_file():
            raise EvidenceError(f"evidence bundle {bundle}: {rel} is missing (listed in {MANIFEST})")
        got, _ = sha256_file(path)
        if got != entry["sha256"]:
            raise EvidenceError(
                f"evidence bundle {bundle}: {rel} changed (sha256 {got[:16]}..., {MANIFEST} says "
                f"{entry['sha256'][:16]}...): the evidence was altered after it was written"
            )
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel not in listed and rel not in OUTSIDE_MANIFEST:
            raise EvidenceError(f"evidence bundle {bundle}: {rel} is not in {MANIFEST}: it was added afterwards")
    return len(listed)


def _signed_digests(statement: Any) -> dict[str, str]:
    """Bundle path -> sha256 the signed statement gives: every result (byproducts) and the spec copy (inputs/)."""
    predicate = statement.get("predicate") or {}
    out = {
        str(item.get("uri")): str((item.get("digest") or {}).get("sha256", ""))
        for item in (predicate.get("runDetails") or {}).get("byproducts") or []
        if isinstance(item, dict) and item.get("uri")
    }
    release = ((predicate.get("buildDefinition") or {}).get("externalParameters") or {}).get("release") or {}
    if release.get("path") and release.get("digest"):
        out[f"inputs/{Path(str(release['path'])).name}"] = str(release["digest"].get("sha256", ""))
    return out


def _check_covered(bundle: Path, statement: Any, listed: dict[str, Any]) -> None:
    """Every file of the manifest but the statement and its envelope must carry the digest the statement signed."""
    signed = _signed_digests(statement if isinstance(statement, dict) else {})
    for rel, entry in sorted(listed.items()):
        if rel not in (STATEMENT, ENVELOPE) and signed.get(rel) != entry["sha256"]:
            raise EvidenceError(
                f"evidence bundle {bundle}: {rel} is not the file the signed statement names (its sha256 differs "
                f"or it is not named): it was changed or added after signing"
            )


def _check_signature(bundle: Path, listed: dict[str, Any], public_key: Path | None) -> str:
    path = bundle / ENVELOPE
    if not path.is_file():
        if public_key is not None:
            raise EvidenceError(
                f"evidence bundle {bundle}: {ENVELOPE} is missing but a public key was given: the bundle is unsigned"
            )
        return "absent"
    if public_key is None:
        return "present, not checked (no public key given)"
    key = load_public_key(public_key)
    where = f"evidence bundle {bundle}: {ENVELOPE}"
    try:
        envelope = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EvidenceError(f"{where}: not JSON ({e}); re-sign the bundle") from e
    payload, keyid = verify_envelope(envelope, key, where)
    if payload != (bundle / STATEMENT).read_bytes():
        raise EvidenceError(f"evidence bundle {bundle}: {STATEMENT} is not the statement signed in {ENVELOPE}")
    _check_covered(bundle, json.loads(payload), listed)
    return f"valid ({keyid[:23]}...)"


def verify_bundle(bundle: Path, *, expected_digest: str | None = None, public_key: Path | None = None) -> Verified:
    """Recompute every digest of the bundle; raise naming the first file that changed.

    Args:
        bundle: The bundle directory.
        expected_digest: The digest recorded elsewhere (the registry tag); must match when given.
        public_key: A trusted Ed25519 public key (PEM); when given, the DSSE envelope must exist and verify, and
            its statement must name every other file of the bundle with its digest.

    Raises:
        EvidenceError: A file is missing, changed or added, the manifest or its digest changed, the digest is not
            the expected one, or the signature is missing or invalid.
    """
    if not (bundle / MANIFEST).is_file():
        raise EvidenceError(f"evidence bundle {bundle}: {MANIFEST} is missing: not an evidence bundle")
    text = (bundle / MANIFEST).read_bytes()
    digest = "sha256:" + hashlib.sha256(text).hexdigest()
    recorded = (bundle / DIGEST_FILE).read_text().strip() if (bundle / DIGEST_FILE).is_file() else ""
    if digest != recorded:
        raise EvidenceError(
            f"evidence bundle {bundle}: {MANIFEST} changed (its sha256 is not the one in {DIGEST_FILE})"
        )
    if expected_digest and digest != expected_digest:
        raise EvidenceError(
            f"evidence bundle {bundle}: {DIGEST_FILE} is {digest[:23]}... but the registry recorded "
            f"{expected_digest[:23]}...: the bundle was replaced"
        )
    manifest = json.loads(text)
    files = _check_files(bundle, manifest)
    signature = _check_signature(bundle, {f["path"]: f for f in manifest.get("files", [])}, public_key)
    anchors = [*(["registry digest"] if expected_digest else []), *(["signature"] if public_key else [])]
    return Verified(bundle=str(bundle), digest=digest, files=files, signature=signature, anchored=" and ".join(anchors))
