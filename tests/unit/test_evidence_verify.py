"""Evidence bundle verification: a changed, removed or added file is named; Ed25519 signing and its checks."""

import json
from pathlib import Path

import pytest

from steps.evidence import EvidenceError, verify_bundle, write_bundle
from tests.unit.test_evidence import REPO, run_inputs, write_full_bundle, write_run_files
from workflows.cli.main import main


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return write_full_bundle(tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda b: (b / "results/gate-decision.json").write_text('{"passed": true, "reasons": []}'),
            "results/gate-decision.json changed",
        ),
        (lambda b: (b / "results/latency-report.json").unlink(), "results/latency-report.json is missing"),
        (lambda b: (b / "results/extra.json").write_text("{}"), "results/extra.json is not in manifest.json"),
        (
            lambda b: (b / "statement.json").write_text((b / "statement.json").read_text().replace("alice", "mallory")),
            "statement.json changed",
        ),
        (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text() + " "), "manifest.json changed"),
    ],
)
def test_verify_names_the_file_that_changed(bundle: Path, change: object, named: str) -> None:
    """GIVEN a verified bundle
    WHEN one file is edited, removed or added (the report is free to change: it is outside the manifest)
    THEN verification fails naming that file."""
    (bundle / "report.html").write_text("re-rendered")
    verify_bundle(bundle)
    change(bundle)  # type: ignore[operator]
    with pytest.raises(EvidenceError, match=named.replace(".", r"\.")) as err:
        verify_bundle(bundle)
    assert "\n" not in str(err.value)


def test_verify_refuses_a_digest_other_than_the_recorded_one(bundle: Path) -> None:
    """GIVEN a bundle consistent in itself WHEN verified against another recorded digest THEN it fails."""
    with pytest.raises(EvidenceError, match="the registry recorded sha256:0000"):
        verify_bundle(bundle, expected_digest="sha256:" + "0" * 64)


def _keygen(path: Path) -> None:
    assert main(["evidence", "keygen", str(path)]) == 0


def test_signed_bundle_verifies_with_its_public_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN an Ed25519 key from `llmrelease evidence keygen` and a bundle signed with it
    WHEN verified with its public key, another key, and without a key
    THEN valid; refused naming manifest.sig; and 'not checked'. An unsigned bundle fails when a key is given."""
    monkeypatch.chdir(REPO)
    _keygen(tmp_path / "keys/release.pem")
    _keygen(tmp_path / "keys/other.pem")
    assert oct((tmp_path / "keys/release.pem").stat().st_mode & 0o777) == "0o600"
    files = write_run_files(tmp_path / "run")
    digest = write_bundle(run_inputs(files), tmp_path / "b", key_path=str(tmp_path / "keys/release.pem"))
    sig = json.loads((tmp_path / "b/manifest.sig").read_text())
    assert sig["signed"] == digest and sig["algorithm"] == "ed25519"
    assert verify_bundle(tmp_path / "b", public_key=tmp_path / "keys/release.pem.pub").signature.startswith("valid")
    with pytest.raises(EvidenceError, match="manifest.sig does not verify"):
        verify_bundle(tmp_path / "b", public_key=tmp_path / "keys/other.pem.pub")
    assert verify_bundle(tmp_path / "b").signature.startswith("present, not checked")
    write_bundle(run_inputs(files), tmp_path / "unsigned")
    with pytest.raises(EvidenceError, match="manifest.sig is missing"):
        verify_bundle(tmp_path / "unsigned", public_key=tmp_path / "keys/release.pem.pub")
    with pytest.raises(EvidenceError, match="not an Ed25519 key|cannot read it"):
        write_bundle(run_inputs(files), tmp_path / "bad", key_path=str(tmp_path / "keys/release.pem.pub"))
