"""The signed statement is a standard DSSE envelope: an independent implementation (securesystemslib) agrees.

securesystemslib is the DSSE/in-toto reference library of the Secure Systems Lab (the authors of DSSE and in-toto):
its `Envelope` verifies what `steps.evidence.dsse` signs, and what it signs verifies with ours.
"""

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from steps.evidence import EvidenceError, write_bundle
from steps.evidence.dsse import PAYLOAD_TYPE, key_id, pae, sign_envelope, verify_envelope
from tests.unit.test_evidence import REPO, run_inputs, write_run_files
from workflows.cli.main import main


def _their_key(key: Ed25519PrivateKey) -> SSlibKey:
    """Our public key as securesystemslib's key object, under the keyid our envelopes carry."""
    return SSlibKey.from_crypto(key.public_key(), keyid=key_id(key.public_key()))


def test_pae_is_the_one_of_the_dsse_spec() -> None:
    """GIVEN the example of the DSSE protocol WHEN encoded THEN the spec's bytes, and securesystemslib's."""
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    theirs = Envelope(payload=b'{"a": 1}', payload_type=PAYLOAD_TYPE, signatures={}).pae()
    assert pae(PAYLOAD_TYPE, b'{"a": 1}') == theirs


def test_a_signed_bundle_verifies_with_securesystemslib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN a bundle signed by the evidence step's code
    WHEN securesystemslib reads statement.dsse.json and verifies it with the public key (threshold 1)
    THEN it accepts it and its payload is statement.json byte for byte, an in-toto Statement v1; another key, or
    a payload changed by one byte, is refused by it."""
    monkeypatch.chdir(REPO)
    pem = tmp_path / "k.pem"
    assert main(["evidence", "keygen", str(pem)]) == 0
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    write_bundle(run_inputs(write_run_files(tmp_path / "run")), tmp_path / "b", key=str(pem))
    text = (tmp_path / "b/statement.dsse.json").read_text()
    envelope = Envelope.from_dict(json.loads(text))  # from_dict consumes its argument
    accepted = envelope.verify([_their_key(key)], 1)
    assert list(accepted) == [key_id(key.public_key())]
    assert envelope.payload == (tmp_path / "b/statement.json").read_bytes()
    assert envelope.payload_type == "application/vnd.in-toto+json"
    assert json.loads(envelope.payload)["_type"] == "https://in-toto.io/Statement/v1"
    with pytest.raises(VerificationError):
        envelope.verify([_their_key(Ed25519PrivateKey.generate())], 1)
    changed = dict(json.loads(text), payload=base64.b64encode(envelope.payload.replace(b"alice", b"alicf")).decode())
    with pytest.raises(VerificationError):
        Envelope.from_dict(changed).verify([_their_key(key)], 1)


def test_an_envelope_signed_by_securesystemslib_verifies_with_ours() -> None:
    """GIVEN a statement signed by securesystemslib's CryptoSigner
    WHEN our verifier checks it with the signer's public key, and with another key
    THEN the payload comes back; with the other key it is refused in one line naming the envelope."""
    key = Ed25519PrivateKey.generate()
    payload = json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": []}).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(CryptoSigner(key, _their_key(key)))
    got, keyid = verify_envelope(envelope.to_dict(), key.public_key(), "their.dsse.json")
    assert (got, keyid) == (payload, key_id(key.public_key()))
    with pytest.raises(EvidenceError, match="their.dsse.json: no signature verifies") as err:
        verify_envelope(envelope.to_dict(), Ed25519PrivateKey.generate().public_key(), "their.dsse.json")
    assert "\n" not in str(err.value)


def test_our_envelope_is_refused_for_another_payload_type_or_a_malformed_body() -> None:
    """GIVEN an envelope we signed WHEN its payloadType is changed, or its signature is not base64
    THEN verification fails naming the envelope (the type is inside what is signed)."""
    key = Ed25519PrivateKey.generate()
    envelope = sign_envelope(b"{}", key)
    with pytest.raises(EvidenceError, match="payloadType"):
        verify_envelope({**envelope, "payloadType": "application/json"}, key.public_key(), "e")
    broken = {**envelope, "signatures": [{"keyid": "x", "sig": "***"}]}
    with pytest.raises(EvidenceError, match="e: not a DSSE envelope"):
        verify_envelope(broken, key.public_key(), "e")
