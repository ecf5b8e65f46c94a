"""Writing an evidence bundle: spec and result copies, the statement and its DSSE envelope, manifest and digest."""

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from steps.core.hashing import sha256_file
from steps.evidence.dsse import envelope_json, load_private_key, sign_envelope
from steps.evidence.layout import (
    DIGEST_FILE,
    ENVELOPE,
    EXPECTED_KINDS,
    MANIFEST,
    OUTSIDE_MANIFEST,
    RESULT_FILES,
    STATEMENT,
)
from steps.evidence.statement import Inputs, build_statement, load_result

__all__ = ["write_bundle"]


def _copy_results(inputs: Inputs, bundle: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results: list[dict[str, Any]] = []
    found: dict[str, Any] = {}
    for raw in inputs.report_paths:
        source = Path(raw)
        if not source.is_file():
            kind = next((k for k in EXPECTED_KINDS if k in source.name), "unknown")
            results.append({"kind": kind, "path": raw, "reason": "file not found"})
            continue
        kind, data = load_result(source)
        name = RESULT_FILES.get(kind, source.name)
        target = bundle / "results" / name
        n = 2
        while target.exists():
            target, n = bundle / "results" / f"{Path(name).stem}-{n}.json", n + 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        uri = target.relative_to(bundle).as_posix()
        results.append(
            {
                "name": kind,
                "kind": kind,
                "uri": uri,
                "digest": {"sha256": sha256_file(target)[0]},
                "mediaType": "application/json",
                "annotations": {"source": raw},
            }
        )
        if kind != "other":
            found.setdefault(kind, data)
    return results, found


def _write_manifest(bundle: Path) -> str:
    files = sorted(
        p for p in bundle.rglob("*") if p.is_file() and p.relative_to(bundle).as_posix() not in OUTSIDE_MANIFEST
    )
    entries = []
    for p in files:
        sha, size = sha256_file(p)
        entries.append({"path": p.relative_to(bundle).as_posix(), "sha256": sha, "size": size})
    text = json.dumps({"version": 1, "algorithm": "sha256", "files": entries}, indent=2, sort_keys=True) + "\n"
    (bundle / MANIFEST).write_text(text, encoding="utf-8")
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    (bundle / DIGEST_FILE).write_text(digest + "\n", encoding="utf-8")
    return digest


def write_bundle(inputs: Inputs, bundle: Path, *, key: str | None = None) -> str:
    """Write the bundle for `inputs` into `bundle` (emptied first); returns the evidence digest.

    Args:
        inputs: What the run was and the reports it produced.
        bundle: The bundle directory.
        key: An Ed25519 private key (a PEM path or PEM text): the statement is then signed as a DSSE envelope
            (`ENVELOPE`, listed in the manifest). None writes an unsigned bundle.

    Raises:
        EvidenceError: The signing key cannot be read or is not an Ed25519 private key (nothing is written).
    """
    signer = load_private_key(key) if key else None
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    spec_copy = None
    if inputs.release and Path(inputs.release).is_file():
        spec_copy = bundle / "inputs" / Path(inputs.release).name
        spec_copy.parent.mkdir()
        shutil.copyfile(inputs.release, spec_copy)
    results, found = _copy_results(inputs, bundle)
    if inputs.release and spec_copy is None:
        results.append({"kind": "release", "path": inputs.release, "reason": "release spec not found"})
    statement = build_statement(inputs, spec_copy, results, found)
    payload = (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode()
    (bundle / STATEMENT).write_bytes(payload)
    if signer is not None:
        (bundle / ENVELOPE).write_text(envelope_json(sign_envelope(payload, signer)), encoding="utf-8")
    return _write_manifest(bundle)
