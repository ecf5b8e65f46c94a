"""Verifying an evidence bundle: recompute every digest and check the signature, naming the file at fault."""

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from steps.core.hashing import sha256_file
from steps.evidence.layout import DIGEST_FILE, MANIFEST, OUTSIDE_MANIFEST, SIGNATURE, EvidenceError

__all__ = ["Verified", "verify_bundle"]


class Verified(BaseModel):
    """The outcome of a successful `verify_bundle`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bundle: str
    digest: str
    files: int
    signature: str  # "valid (keyid ...)", "absent", or "present, not checked (no public key given)"


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


def _check_signature(bundle: Path, digest: str, public_key: Path | None) -> str:
    sig_path = bundle / SIGNATURE
    if not sig_path.is_file():
        if public_key is not None:
            raise EvidenceError(f"evidence bundle {bundle}: {SIGNATURE} is missing but a public key was given")
        return "absent"
    if public_key is None:
        return "present, not checked (no public key given)"
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        key = serialization.load_pem_public_key(public_key.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise TypeError("not an Ed25519 public key")
        key.verify(base64.b64decode(sig["signature"]), digest.encode())
    except (InvalidSignature, KeyError, ValueError, TypeError) as e:
        raise EvidenceError(
            f"evidence bundle {bundle}: {SIGNATURE} does not verify with {public_key} ({type(e).__name__})"
        ) from e
    return f"valid ({sig.get('keyid', '')[:23]}...)"


def verify_bundle(bundle: Path, *, expected_digest: str | None = None, public_key: Path | None = None) -> Verified:
    """Recompute every digest of the bundle; raise naming the first file that changed.

    Args:
        bundle: The bundle directory.
        expected_digest: The digest recorded elsewhere (the registry tag); must match when given.
        public_key: An Ed25519 public key (PEM); when given, the signature must exist and verify.

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
    files = _check_files(bundle, json.loads(text))
    signature = _check_signature(bundle, digest, public_key)
    return Verified(bundle=str(bundle), digest=digest, files=files, signature=signature)
