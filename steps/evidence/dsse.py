"""DSSE (Dead Simple Signing Envelope) around the in-toto statement, signed with Ed25519 through `cryptography`.

The envelope is the standard one (github.com/secure-systems-lab/dsse, envelope.md and protocol.md)::

    {"payloadType": "application/vnd.in-toto+json", "payload": base64(statement.json),
     "signatures": [{"keyid": "sha256:<hex of the raw public key>", "sig": base64(Ed25519(PAE(type, payload)))}]}

where PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, LEN the byte length in ASCII
decimal. Any DSSE verifier (securesystemslib, in-toto, sigstore's tooling) checks it with the public key.

A signing key is an unencrypted PEM Ed25519 private key (`llmrelease evidence keygen`), given either as a path or
as the PEM text itself (what an environment variable set from a Kubernetes Secret holds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.evidence.layout import EvidenceError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PAYLOAD_TYPE",
    "envelope_json",
    "key_id",
    "load_private_key",
    "load_public_key",
    "pae",
    "sign_envelope",
    "verify_envelope",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
_PEM = "-----BEGIN"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes that are actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    """`sha256:<hex>` of the raw 32-byte public key: the envelope's keyid (a hint, not trusted)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def load_private_key(value: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in `value`: a path to a PEM file, or the PEM text itself.

    Raises:
        EvidenceError: It cannot be read, is encrypted, or is not an Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    inline = value.lstrip().startswith(_PEM)
    where = "the PEM key given inline" if inline else f"signing key {value}"
    try:
        pem = value.encode() if inline else Path(value).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as e:
        raise EvidenceError(f"{where}: cannot read it ({type(e).__name__}); give an unencrypted PEM key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise EvidenceError(f"{where}: not an Ed25519 key; create one with `llmrelease evidence keygen`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key (PEM) at `path`.

    Raises:
        EvidenceError: It cannot be read or is not an Ed25519 public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise EvidenceError(f"public key {path}: cannot read it ({type(e).__name__}); give a PEM public key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"public key {path}: not an Ed25519 key; give the .pub of `llmrelease evidence keygen`")
    return key


def sign_envelope(payload: bytes, key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    """The DSSE envelope of `payload`, signed by `key`."""
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(key.sign(pae(payload_type, payload))).decode()}
        ],
    }


def _b64(text: Any) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE verifiers must accept both)."""
    s = str(text).strip()
    s += "=" * (-len(s) % 4)
    return base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)


def verify_envelope(envelope: Any, public_key: Ed25519PublicKey, where: str) -> tuple[bytes, str]:
    """Check the envelope's signatures with `public_key`; return (the payload, the keyid of the one that verified).

    Args:
        envelope: The parsed envelope JSON.
        public_key: The trusted key.
        where: What to name in errors (the envelope's file).

    Raises:
        EvidenceError: The envelope is malformed, of another payload type, or no signature verifies.
    """
    from cryptography.exceptions import InvalidSignature

    try:
        payload_type, payload = str(envelope["payloadType"]), _b64(envelope["payload"])
        signatures = [(str(s.get("keyid", "")), _b64(s["sig"])) for s in envelope["signatures"]]
    except (KeyError, TypeError, AttributeError, binascii.Error, ValueError) as e:
        raise EvidenceError(f"{where}: not a DSSE envelope ({type(e).__name__}: {e}); re-sign the bundle") from e
    if payload_type != PAYLOAD_TYPE:
        raise EvidenceError(f"{where}: payloadType is {payload_type!r}, not {PAYLOAD_TYPE!r}")
    message = pae(payload_type, payload)
    for keyid, sig in signatures:
        try:
            public_key.verify(sig, message)
        except InvalidSignature:
            continue
        return payload, keyid or key_id(public_key)
    raise EvidenceError(
        f"{where}: no signature verifies with the public key {key_id(public_key)[:23]}...: the statement was "
        "changed after signing, or it was signed with another key"
    )


def envelope_json(envelope: dict[str, Any]) -> str:
    """The envelope as written into the bundle."""
    return json.dumps(envelope, indent=2) + "\n"
