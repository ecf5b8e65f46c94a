"""`llmrelease` commands for evidence, the release report and release status (added by `workflows.cli.main`).

llmrelease evidence show NAME VERSION [--uid UID] [--json]
llmrelease evidence verify NAME VERSION [--uid UID] [--public-key PEM]   or   --dir BUNDLE [--digest D]
    exit 0: verified and anchored (registry digest or trusted signature); 1: altered; 3: self-consistent only
llmrelease evidence keygen PATH
llmrelease report NAME VERSION [--uid UID] [--out FILE]                   or   --dir BUNDLE
llmrelease status NAME [--at 2026-11-23T12:00:00Z] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.errors import ReleaseError, SpecError

__all__ = ["add_commands"]


def _evidence_tag(name: str, version: str) -> dict[str, Any]:
    """The version's `llmrelease.evidence` tag, decoded ({} when the version or the tag is absent)."""
    from registry.tags import EVIDENCE_TAG
    from steps.core.tracking import mlflow_client

    try:
        raw = (mlflow_client().get_model_version(name, version).tags or {}).get(EVIDENCE_TAG)
        return dict(json.loads(raw)) if raw else {}
    except Exception:  # no registry entry just means: look in the local store only
        return {}


def _local_bundle(name: str, version: str, uid: str | None, tag: dict[str, Any]) -> Path | None:
    from steps.evidence import STATEMENT, evidence_root

    root = evidence_root() / name / version
    if uid:
        return root / uid if (root / uid).is_dir() else None
    if tag.get("workflow_uid") and (root / tag["workflow_uid"]).is_dir():
        return root / str(tag["workflow_uid"])
    bundles = [d for d in root.glob("*") if (d / STATEMENT).is_file()] if root.is_dir() else []
    return max(bundles, key=lambda d: (d / STATEMENT).stat().st_mtime, default=None)


def _run_id(name: str, version: str, uid: str | None, tag: dict[str, Any]) -> str | None:
    from registry.tags import EVIDENCE_EXPERIMENT, MODEL_NAME_TAG, MODEL_VERSION_TAG, WORKFLOW_UID_TAG
    from steps.core.tracking import mlflow_client

    if tag.get("run_id") and (not uid or uid == tag.get("workflow_uid")):
        return str(tag["run_id"])
    client = mlflow_client()
    experiment = client.get_experiment_by_name(EVIDENCE_EXPERIMENT)
    if experiment is None:
        return None
    query = f"tags.`{MODEL_NAME_TAG}` = '{name}' and tags.`{MODEL_VERSION_TAG}` = '{version}'"
    query += f" and tags.`{WORKFLOW_UID_TAG}` = '{uid}'" if uid else ""
    runs = client.search_runs([experiment.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    return str(runs[0].info.run_id) if runs else None


@contextmanager
def _mlflow_copy(run_id: str | None) -> Iterator[Path | None]:
    """The bundle logged to MLflow run `run_id`, downloaded into a temporary folder (None without a run)."""
    from steps.core.tracking import mlflow_client

    if run_id is None:
        yield None
        return
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # the progress bar would break "one line on stderr"
    before = os.environ.get(quiet)
    os.environ[quiet] = "false"
    try:
        with tempfile.TemporaryDirectory(prefix="llmrelease-evidence-") as tmp:
            yield Path(mlflow_client().download_artifacts(run_id, "evidence", tmp))
    finally:
        if before is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = before


def _no_evidence(name: str, version: str, uid: str | None) -> ReleaseError:
    from steps.evidence import EvidenceError

    which = f" (workflow uid {uid})" if uid else ""
    return EvidenceError(
        f"no evidence for {name!r} version {version}{which} in the local store or MLflow: check the name, the "
        "version and LLMRELEASE_HOME / MLFLOW_TRACKING_URI"
    )


def _summary_lines(bundle: Path) -> list[str]:
    from steps.evidence.report import load_bundle

    data = load_bundle(bundle)
    st, s = data["statement"], data["summary"]
    subject, wf = st["subject"][0], st["predicate"]["buildDefinition"]["externalParameters"]["workflow"]
    gate, lat, canary, approval = s.get("gate"), s.get("latency"), s.get("canary"), s.get("approval")
    lines = [
        f"bundle:    {bundle}",
        f"digest:    {data['digest']}" + ("  (signed)" if data["signature"] else ""),
        f"subject:   {subject['name']} v{subject['annotations'].get('version', '')} "
        f"sha256:{subject['digest'].get('sha256', 'unknown')}",
        f"workflow:  {wf.get('name')} uid {wf.get('uid')} status {s.get('workflowStatus') or 'unknown'}",
        f"gate:      {'none' if gate is None else 'pass' if gate['passed'] else 'fail'}",
        f"latency:   {'none' if lat is None else lat['verdict']}",
        f"canary:    {'none' if canary is None else canary['outcome']}",
        f"approval:  {'none' if not approval else approval.get('approver')}",
        "missing:   " + (", ".join(str(m.get("kind")) for m in s.get("missing") or []) or "none"),
    ]
    return lines + [f"  {f['sha256'][:16]}  {f['path']}" for f in data["manifest"]["files"]]


def _cmd_show(args: argparse.Namespace) -> int:
    from steps.evidence import STATEMENT

    tag = _evidence_tag(args.name, args.version)
    local = _local_bundle(args.name, args.version, args.uid, tag)
    with _mlflow_copy(None if local else _run_id(args.name, args.version, args.uid, tag)) as remote:
        bundle = local or remote
        if bundle is None:
            raise _no_evidence(args.name, args.version, args.uid)
        print(
            (bundle / STATEMENT).read_text(encoding="utf-8").rstrip()
            if args.json
            else "\n".join(_summary_lines(bundle))
        )
    return 0


def _public_key(arg: str | None) -> Path | None:
    from steps.evidence import PUBKEY_ENV

    value = arg or os.environ.get(PUBKEY_ENV, "")
    return Path(value) if value else None


UNANCHORED = 3  # `evidence verify`: every digest matches, but nothing says the bundle is the one the run wrote


def _cmd_verify(args: argparse.Namespace) -> int:
    from steps.evidence import verify_bundle

    key = _public_key(args.public_key)
    if args.dir:
        ok = verify_bundle(Path(args.dir), expected_digest=args.digest, public_key=key)
        return _print_verified([("", ok)], args.json)
    if not (args.name and args.version):
        raise SpecError("evidence verify: give NAME VERSION, or --dir BUNDLE")
    tag = _evidence_tag(args.name, args.version)
    local = _local_bundle(args.name, args.version, args.uid, tag)
    checked: list[tuple[str, Any]] = []
    with _mlflow_copy(_run_id(args.name, args.version, args.uid or (local.name if local else None), tag)) as remote:
        for where, bundle in (("artifact store", local), ("MLflow", remote)):
            if bundle is None:
                continue
            uid = json.loads((bundle / "statement.json").read_text())["predicate"]["runDetails"]["metadata"]
            expected = tag.get("digest") if tag.get("workflow_uid") == uid.get("invocationId") else None
            checked.append((where, verify_bundle(bundle, expected_digest=args.digest or expected, public_key=key)))
    if not checked:
        raise _no_evidence(args.name, args.version, args.uid)
    return _print_verified(checked, args.json)


def _print_verified(checked: list[tuple[str, Any]], as_json: bool) -> int:
    """One line per verified bundle (where it was found: artifact store, MLflow or "" for --dir), or JSON.

    Returns:
        0 when every bundle's provenance is anchored (registry digest or trusted signature), else `UNANCHORED`.
    """
    if as_json:
        print(json.dumps([{"where": where or "dir", **ok.model_dump()} for where, ok in checked], indent=2))
    for where, ok in [] if as_json else checked:
        at = f"{where + ' ' if where else ''}{ok.bundle}: {ok.digest} ({ok.files} files, signature {ok.signature}"
        if ok.anchored:
            print(f"OK {at}, checked against the {ok.anchored})")
        else:
            print(
                f"UNCHECKED PROVENANCE {at}): self-consistent, but provenance could not be checked: give the "
                "registry's digest (--digest) or the signer's public key (--public-key)"
            )
    return 0 if all(ok.anchored for _, ok in checked) else UNANCHORED


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from steps.evidence import KEY_ENV, KEY_SECRET

    path = Path(args.path)
    if path.exists():
        raise SpecError(f"evidence keygen: {path} exists; remove it or give another path")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    Path(f"{path}.pub").write_bytes(pub)
    print(f"wrote {path} (private, mode 600) and {path}.pub; sign with {KEY_ENV}={path} or Secret {KEY_SECRET}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from steps.evidence.report import write_report

    if args.dir:
        bundle: Path | None = Path(args.dir)
    elif args.name and args.version:
        bundle = _local_bundle(args.name, args.version, args.uid, _evidence_tag(args.name, args.version))
    else:
        raise SpecError("report: give NAME VERSION, or --dir BUNDLE")
    if bundle is None or not bundle.is_dir():
        raise _no_evidence(args.name or "?", args.version or "?", args.uid)
    print(write_report(bundle, Path(args.out) if args.out else None))
    return 0


def _parse_at(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise SpecError(f"status --at {text!r}: not an ISO 8601 time; write e.g. 2026-11-23T12:00:00Z") from e


def _cmd_status(args: argparse.Namespace) -> int:
    from steps.release.status import format_at, format_status, release_status, status_at

    if args.at:
        at = status_at(args.name, _parse_at(args.at))
        print(at.model_dump_json(indent=2) if args.json else format_at(at))
    else:
        report = release_status(args.name)
        print(report.model_dump_json(indent=2) if args.json else format_status(report))
    return 0


def add_commands(sub: Any) -> None:
    """Add `evidence`, `report` and `status` to the `llmrelease` parser's subparsers."""
    evidence = sub.add_parser("evidence", help="show and verify release evidence bundles")
    ev_sub = evidence.add_subparsers(dest="evidence_command", required=True)
    show = ev_sub.add_parser("show", help="print the evidence of a model version (latest run, or --uid)")
    show.add_argument("name")
    show.add_argument("version")
    show.add_argument("--uid", help="the workflow uid of the run (default: the latest)")
    show.add_argument("--json", action="store_true", help="print statement.json")
    show.set_defaults(func=_cmd_show)
    verify = ev_sub.add_parser(
        "verify",
        help="recompute every digest and check provenance; exit 0 OK, 1 naming the first changed file, "
        f"{UNANCHORED} when self-consistent but provenance could not be checked (no registry digest, no public key)",
        description="Exit status: 0 every digest matches and provenance is anchored (the registry's digest, or a "
        "DSSE signature that verifies with --public-key); 1 a file changed, went missing or was added, or the "
        f"signature does not verify; {UNANCHORED} the bundle is self-consistent but its provenance could not be "
        "checked (no registry digest and no public key).",
    )
    verify.add_argument("name", nargs="?")
    verify.add_argument("version", nargs="?")
    verify.add_argument("--uid", help="the workflow uid of the run (default: the latest)")
    verify.add_argument("--dir", help="verify this bundle directory instead")
    verify.add_argument("--digest", help="the evidence digest the bundle must have")
    verify.add_argument(
        "--public-key",
        help="trusted Ed25519 public key (PEM) of statement.dsse.json; default $LLMRELEASE_EVIDENCE_PUBKEY",
    )
    verify.add_argument("--json", action="store_true", help="print what was verified as JSON")
    verify.set_defaults(func=_cmd_verify)
    keygen = ev_sub.add_parser("keygen", help="write an Ed25519 signing key (PATH) and its public key (PATH.pub)")
    keygen.add_argument("path")
    keygen.set_defaults(func=_cmd_keygen)

    report = sub.add_parser("report", help="(re)render the HTML release report of an evidence bundle")
    report.add_argument("name", nargs="?")
    report.add_argument("version", nargs="?")
    report.add_argument("--uid", help="the workflow uid of the run (default: the latest)")
    report.add_argument("--dir", help="render this bundle directory instead")
    report.add_argument("--out", help="where to write the HTML (default: <bundle>/report.html)")
    report.set_defaults(func=_cmd_report)

    status = sub.add_parser("status", help="champion, candidates in flight, last nightly and recent releases")
    status.add_argument("name")
    status.add_argument("--at", help="answer for this time instead: who was champion, who promoted and approved it")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_cmd_status)
