"""Argo's own examples under `llmrelease run`: how many end in the phase Argo's e2e suite expects.

    python benchmarks/argo_examples.py --mirror /work/.mirror/argoproj+argo-workflows/repo [--ref HEAD]

The selection is Argo's (test/e2e/examples_test.go): every Workflow in every manifest (.yaml, .yml, .json) under
examples/, recursively, whose labels lack `workflows.argoproj.io/no-test`; each must end Succeeded
(`WaitForWorkflow(fixtures.ToBeSucceeded)`), unless the example carries an expected phase of its own (the label or
annotation `workflows.argoproj.io/expected-phase`, none at the time of writing). Like the suite, the WorkflowTemplates
and ClusterWorkflowTemplates of examples/ are available to every example (here: the runner's argo dir) and its
ConfigMaps are applied (here: `--cluster-config`), and the e2e cluster's artifact repositories (quick-start's
`artifact-repositories` ConfigMap, MinIO there) are backed by a moto S3 server started for the run. The examples
are read from the git mirror, extracted into a temporary folder and never copied into this repository. Each runs
as `llmrelease run FILE --json [--isolation bwrap]` with a timeout; its ConfigMaps, Secrets and
PersistentVolumeClaims (the claim volumes-existing mounts) form the cluster config.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml
from moto import server as moto_server

ROOT = Path(__file__).resolve().parents[1]
NO_TEST = "workflows.argoproj.io/no-test"
EXPECTED = "workflows.argoproj.io/expected-phase"
_SHARED_KINDS = ("WorkflowTemplate", "ClusterWorkflowTemplate")


@dataclass(frozen=True)
class Case:
    """One Workflow document of one example file."""

    file: str
    index: int
    doc: dict[str, Any]

    @property
    def expected(self) -> str:
        meta = self.doc.get("metadata") or {}
        notes = {**(meta.get("annotations") or {}), **(meta.get("labels") or {})}
        return str(notes.get(EXPECTED, "Succeeded"))


@dataclass(frozen=True)
class Outcome:
    """What `llmrelease run` made of a case."""

    case: Case
    phase: str
    reason: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.phase == self.case.expected


def extract(mirror: Path, ref: str, into: Path) -> Path:
    """examples/ of `ref` in the git mirror, written under `into`; returns the examples folder."""
    archive = subprocess.run(
        ["git", "-C", str(mirror), "archive", "--format=tar", ref, "examples"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "examples"


def documents(path: Path) -> list[dict[str, Any]]:
    """The mapping documents of a manifest; an unparseable file yields none (Argo's walk fails it too)."""
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    except (yaml.YAMLError, UnicodeDecodeError):
        return []


def cases(examples: Path) -> Iterator[Case]:
    """The Workflows Argo's example suite runs, in path order."""
    for path in sorted(p for p in examples.rglob("*") if p.suffix in (".yaml", ".yml", ".json")):
        workflows = [d for d in documents(path) if d.get("kind") == "Workflow"]
        for index, doc in enumerate(workflows):
            if NO_TEST not in ((doc.get("metadata") or {}).get("labels") or {}):
                yield Case(str(path.relative_to(examples)), index, doc)


def shared(examples: Path, work: Path) -> tuple[Path, Path]:
    """(argo dir of every WorkflowTemplate, cluster-config dir of every ConfigMap and Secret) of examples/."""
    argo_dir, config_dir = work / "templates", work / "cluster"
    argo_dir.mkdir()
    config_dir.mkdir()
    templates, config = [], []
    for path in sorted(examples.rglob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") in _SHARED_KINDS:
                templates.append(doc)
            elif doc.get("kind") in ("ConfigMap", "Secret", "PersistentVolumeClaim"):
                config.append(doc)
    (argo_dir / "templates.yaml").write_text(yaml.safe_dump_all(templates), encoding="utf-8")
    (config_dir / "config.yaml").write_text(yaml.safe_dump_all(config), encoding="utf-8")
    return argo_dir, config_dir


def artifact_repository(mirror: Path, ref: str, config_dir: Path, endpoint: str) -> None:
    """The e2e cluster's artifact repositories (Argo's quick-start manifests), backed by `endpoint` (moto's S3).

    The `artifact-repositories` ConfigMap and the `my-minio-cred` Secret it names are read from the mirror, the
    MinIO service address replaced with `endpoint`, and written into the cluster config; the bucket is created.
    """
    base = "manifests/quick-start/base"
    docs = []
    for path in (f"{base}/artifact-repositories-configmap.yaml", f"{base}/minio/my-minio-cred-secret.yaml"):
        text = subprocess.run(
            ["git", "-C", str(mirror), "show", f"{ref}:{path}"], check=True, capture_output=True, text=True
        ).stdout
        docs += list(yaml.safe_load_all(text.replace("minio:9000", endpoint)))
    (config_dir / "artifact-repositories.yaml").write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    secret = next(d for d in docs if d.get("kind") == "Secret")["stringData"]
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        region_name="us-east-1",
        aws_access_key_id=secret["accesskey"],
        aws_secret_access_key=secret["secretkey"],
    )
    client.create_bucket(Bucket="my-bucket")


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free local port, as host:port, for the run."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


def run_case(case: Case, work: Path, argo_dir: Path, config_dir: Path, timeout: float, isolation: str) -> Outcome:
    """`llmrelease run` on the case's document alone; the phase from its JSON status, else why it did not run."""
    file = work / "cases" / f"{case.file.replace('/', '__')}.{case.index}.yaml"
    file.parent.mkdir(exist_ok=True)
    file.write_text(yaml.safe_dump(case.doc), encoding="utf-8")
    command = [
        str(ROOT / ".venv" / "bin" / "llmrelease"),
        "run",
        str(file),
        "--json",
        "--argo-dir",
        str(argo_dir),
        "--cluster-config",
        str(config_dir),
        "--runs-dir",
        str(work / "runs"),
        "--isolation",
        isolation,
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=work)  # strays stay
    except subprocess.TimeoutExpired:
        return Outcome(case, "Timeout", f"still running after {timeout:.0f}s", timeout)
    seconds = time.monotonic() - started
    try:
        status = json.loads(done.stdout)["status"]
    except (ValueError, KeyError, TypeError):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return Outcome(case, "Refused", lines[-1] if lines else f"exit {done.returncode}", seconds)
    return Outcome(case, str(status["phase"]), _reason(status), seconds)


def _reason(status: dict[str, Any]) -> str:
    """The workflow's message, or the first failed leaf's when that says more."""
    leaves = [
        n
        for n in status.get("nodes", {}).values()
        if n.get("phase") in ("Failed", "Error") and n.get("type") == "Pod" and n.get("message")
    ]
    message = str(status.get("message") or "")
    return str(leaves[0]["message"]) if leaves else message


def table(outcomes: list[Outcome]) -> str:
    """A markdown table, failures first, and the pass count."""
    rows = sorted(outcomes, key=lambda o: (o.passed, o.case.file))
    lines = ["| example | expected | ours | s | reason |", "|---|---|---|---|---|"]
    for o in rows:
        reason = " ".join(o.reason.split())[:160].replace("|", "\\|") if not o.passed else ""
        name = o.case.file + (f"#{o.case.index}" if o.case.index else "")
        lines.append(f"| {name} | {o.case.expected} | {o.phase} | {o.seconds:.1f} | {reason} |")
    passed, total = sum(o.passed for o in outcomes), len(outcomes)
    lines.append(f"\n{passed}/{total} examples end in Argo's phase ({100 * passed / max(1, total):.0f}%)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", type=Path, required=True, help="git dir of argoproj/argo-workflows")
    parser.add_argument("--ref", default="HEAD", help="commit or tag whose examples/ to run")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per example")
    parser.add_argument("--jobs", type=int, default=8, help="examples run at once")
    parser.add_argument("--only", default="", help="run only examples whose path contains one of these (a,b,...)")
    parser.add_argument("--isolation", choices=("none", "bwrap"), default="none", help="llmrelease run --isolation")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="argo-examples-") as tmp, s3_server() as endpoint:
        work = Path(tmp)
        examples = extract(args.mirror, args.ref, work / "src")
        argo_dir, config_dir = shared(examples, work)
        artifact_repository(args.mirror, args.ref, config_dir, endpoint)
        only = args.only.split(",")
        selected = [c for c in cases(examples) if any(o in c.file for o in only)]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            run = lambda c: run_case(c, work, argo_dir, config_dir, args.timeout, args.isolation)  # noqa: E731
            outcomes = list(pool.map(run, selected))
    report = table(outcomes)
    print(report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
