"""Evidence bundle verification: a changed, removed or added file is named; DSSE signing, anchoring, exit codes."""

import base64
import hashlib
import json
import shutil
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
    """GIVEN an Ed25519 key from `llmrelease evidence keygen` and a bundle signed with it (a path, then PEM text)
    WHEN verified with its public key, another key, and without a key
    THEN valid and anchored; refused naming statement.dsse.json; and 'not checked'. An unsigned bundle fails when a
    key is given; a public key is refused as a signing key before anything is written."""
    monkeypatch.chdir(REPO)
    _keygen(tmp_path / "keys/release.pem")
    _keygen(tmp_path / "keys/other.pem")
    assert oct((tmp_path / "keys/release.pem").stat().st_mode & 0o777) == "0o600"
    files = write_run_files(tmp_path / "run")
    write_bundle(run_inputs(files), tmp_path / "b", key=str(tmp_path / "keys/release.pem"))
    envelope = json.loads((tmp_path / "b/statement.dsse.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(envelope["payload"]) == (tmp_path / "b/statement.json").read_bytes()
    listed = {f["path"] for f in json.loads((tmp_path / "b/manifest.json").read_text())["files"]}
    assert "statement.dsse.json" in listed and not (tmp_path / "b/manifest.sig").exists()
    ok = verify_bundle(tmp_path / "b", public_key=tmp_path / "keys/release.pem.pub")
    assert ok.signature.startswith("valid (sha256:") and ok.anchored == "signature"
    with pytest.raises(EvidenceError, match="statement.dsse.json: no signature verifies"):
        verify_bundle(tmp_path / "b", public_key=tmp_path / "keys/other.pem.pub")
    unchecked = verify_bundle(tmp_path / "b")
    assert unchecked.signature.startswith("present, not checked") and unchecked.anchored == ""
    pem = (tmp_path / "keys/release.pem").read_text()
    write_bundle(run_inputs(files), tmp_path / "inline", key=pem)
    assert verify_bundle(tmp_path / "inline", public_key=tmp_path / "keys/release.pem.pub").anchored == "signature"
    write_bundle(run_inputs(files), tmp_path / "unsigned")
    with pytest.raises(EvidenceError, match="statement.dsse.json is missing but a public key was given"):
        verify_bundle(tmp_path / "unsigned", public_key=tmp_path / "keys/release.pem.pub")
    with pytest.raises(EvidenceError, match="not an Ed25519 key|cannot read it"):
        write_bundle(run_inputs(files), tmp_path / "bad", key=str(tmp_path / "keys/release.pem.pub"))
    assert not (tmp_path / "bad").exists()


def _rewrite(bundle: Path, rel: str, text: str) -> None:
    """What a forger does: change a file, then rewrite the manifest and its digest to match."""
    (bundle / rel).write_text(text)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == rel:
            data = (bundle / rel).read_bytes()
            entry["sha256"], entry["size"] = hashlib.sha256(data).hexdigest(), len(data)
    body = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (bundle / "manifest.json").write_text(body)
    (bundle / "manifest.sha256").write_text("sha256:" + hashlib.sha256(body.encode()).hexdigest() + "\n")


def test_a_rewritten_bundle_is_unanchored_without_the_registry_digest_and_refused_with_a_trusted_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a signed bundle, and a copy whose gate decision was rewritten together with the manifest and its digest
    WHEN `evidence verify --dir` runs on each: without anything, with the registry's digest, with the public key
    THEN the original is OK (exit 0) with the digest or the key; without either it exits 3 with one line saying
    provenance could not be checked; the rewritten copy also exits 3 without anchors (it is self-consistent) but
    fails (exit 1) against the registry's digest and against the key, naming the rewritten file."""
    monkeypatch.chdir(REPO)
    _keygen(tmp_path / "keys/release.pem")
    pub = str(tmp_path / "keys/release.pem.pub")
    monkeypatch.delenv("LLMRELEASE_EVIDENCE_PUBKEY", raising=False)
    original = tmp_path / "b"
    key = str(tmp_path / "keys/release.pem")
    digest = write_bundle(run_inputs(write_run_files(tmp_path / "run")), original, key=key)
    capsys.readouterr()
    assert main(["evidence", "verify", "--dir", str(original)]) == 3
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "provenance could not be checked" in out and digest in out
    assert main(["evidence", "verify", "--dir", str(original), "--digest", digest]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert main(["evidence", "verify", "--dir", str(original), "--public-key", pub]) == 0
    assert "checked against the signature" in capsys.readouterr().out
    forged = tmp_path / "forged"
    shutil.copytree(original, forged)
    _rewrite(forged, "results/gate-decision.json", '{"passed": true, "reasons": []}')
    assert main(["evidence", "verify", "--dir", str(forged)]) == 3
    assert "provenance could not be checked" in capsys.readouterr().out
    assert main(["evidence", "verify", "--dir", str(forged), "--digest", digest]) == 1
    assert "the bundle was replaced" in capsys.readouterr().err
    assert main(["evidence", "verify", "--dir", str(forged), "--public-key", pub]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results/gate-decision.json is not the file the signed statement names" in err
    _rewrite(forged, "statement.json", (forged / "statement.json").read_text().replace("alice", "mallory"))
    assert main(["evidence", "verify", "--dir", str(forged), "--public-key", pub]) == 1
    assert "statement.json is not the statement signed in statement.dsse.json" in capsys.readouterr().err
    assert "exit status: 0" in _verify_help().lower() and "3 the bundle is self-consistent" in _verify_help()


def _verify_help() -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["evidence", "verify", "--help"])
    return " ".join(out.getvalue().split())
