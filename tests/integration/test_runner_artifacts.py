"""The local runner's artifact repository, as Argo configures it, against a real S3 API (moto's server).

Each test writes a cluster-config folder (the `artifact-repositories` ConfigMap and the credentials Secret), a
small workflow of our own, and runs it through `llmrelease run`; it then reads the bucket with boto3.
"""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

LLMRELEASE = Path(sys.executable).parent / "llmrelease"
BUCKET = "artifacts"


@dataclass(frozen=True)
class Run:
    rc: int
    status: dict[str, Any]
    stderr: str

    @property
    def name(self) -> str:
        return str(self.status["metadata"]["name"])

    @property
    def phase(self) -> str:
        return str(self.status["status"]["phase"])

    def node(self, display: str) -> dict[str, Any]:
        found = [n for n in self.status["status"]["nodes"].values() if n["displayName"] == display]
        assert found, f"no node {display}: {[n['displayName'] for n in self.status['status']['nodes'].values()]}"
        return found[0]

    def result(self, display: str) -> str:
        return str(self.node(display)["outputs"]["result"])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(endpoint: str) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        region_name="us-east-1",
        aws_access_key_id="minio-user",
        aws_secret_access_key="minio-pass",
    )
    for bucket in (BUCKET, "other-artifacts"):
        client.create_bucket(Bucket=bucket)
    yield client
    for bucket in (BUCKET, "other-artifacts"):
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)


def repository(endpoint: str, bucket: str = BUCKET, secret: str = "s3-credentials", **extra: Any) -> str:
    entry = {
        "s3": {
            "bucket": bucket,
            "endpoint": endpoint,
            "insecure": True,
            "region": "us-east-1",
            "accessKeySecret": {"name": secret, "key": "accesskey"},
            "secretKeySecret": {"name": secret, "key": "secretkey"},
            **extra,
        }
    }
    return yaml.safe_dump(entry)


def cluster_config(tmp_path: Path, repositories: dict[str, str], default: str | None = "main") -> Path:
    """A cluster-config folder: the artifact-repositories ConfigMap and the Secret its entries name."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    notes = {"workflows.argoproj.io/default-artifact-repository": default} if default else {}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "data": repositories,
        "metadata": {"name": "artifact-repositories", "annotations": notes},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-credentials"},
        "stringData": {"accesskey": "minio-user", "secretkey": "minio-pass"},
    }
    (folder / "artifacts.yaml").write_text(yaml.safe_dump_all([config_map, secret]))
    return folder


def run(tmp_path: Path, workflow: str, cluster: Path | None, *params: str) -> Run:
    """`llmrelease run FILE --cluster-config DIR --json`, from a folder that is not the checkout."""
    source = tmp_path / "workflow.yaml"
    source.write_text(workflow)
    argv = [
        str(LLMRELEASE),
        "run",
        str(source),
        "--json",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--argo-dir",
        str(tmp_path / "argo"),
        "--isolation",
        "none",
    ]
    argv += ["--cluster-config", str(cluster)] if cluster else []
    for param in params:
        argv += ["-p", param]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.stdout.strip(), f"no status printed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return Run(proc.returncode, json.loads(proc.stdout), proc.stderr)


def read(s3: Any, key: str, bucket: str = BUCKET) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(s3: Any, bucket: str = BUCKET) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


PASSING = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: passing-}
spec:
  entrypoint: main
  templates:
  - name: main
    dag:
      tasks:
      - {name: produce, template: produce}
      - name: consume
        depends: produce
        template: consume
        arguments:
          artifacts:
          - {name: report, from: "{{tasks.produce.outputs.artifacts.report}}"}
          - {name: tree, from: "{{tasks.produce.outputs.artifacts.tree}}"}
          - {name: leaf, from: "{{tasks.produce.outputs.artifacts.tree}}", subPath: deep/b.txt}
          - {name: flat, from: "{{tasks.produce.outputs.artifacts.flat}}"}
  - name: produce
    script:
      image: python:3.11
      command: [python]
      source: |
        import os
        os.makedirs("/work/tree/deep")
        open("/work/tree/a.txt", "w").write("alpha")
        open("/work/tree/deep/b.txt", "w").write("beta")
        open("/work/report.md", "w").write("# report")
    outputs:
      artifacts:
      - {name: report, path: /work/report.md}
      - {name: tree, path: /work/tree, archive: {none: {}}}
      - {name: flat, path: /work/tree/a.txt, archive: {tar: {compressionLevel: 0}}}
      - {name: absent, path: /work/nothing.txt, optional: true}
  - name: consume
    inputs:
      artifacts:
      - {name: report, path: /in/report.md}
      - {name: tree, path: /in/tree}
      - {name: leaf, path: /in/leaf.txt}
      - {name: flat, path: /in/flat.txt}
    script:
      image: python:3.11
      command: [python]
      source: |
        import os
        print(open("/in/report.md").read(), sorted(os.listdir("/in/tree")), open("/in/leaf.txt").read(),
              open("/in/flat.txt").read())
"""


def test_outputs_go_to_the_default_repository_and_come_back_as_inputs(tmp_path: Path, endpoint: str, s3: Any) -> None:
    """GIVEN a default S3 repository WHEN a task's outputs feed the next THEN they are objects at Argo's keys."""
    result = run(tmp_path, PASSING, cluster_config(tmp_path, {"main": repository(endpoint)}))
    assert result.phase == "Succeeded", result.status["status"]["message"]
    pod = result.node("produce")["id"]
    base = f"{result.name}/{pod}"
    assert keys(s3) == {f"{base}/report.tgz", f"{base}/tree/a.txt", f"{base}/tree/deep/b.txt", f"{base}/flat.tgz"}
    with tarfile.open(fileobj=io.BytesIO(read(s3, f"{base}/report.tgz")), mode="r:gz") as tf:
        member = tf.extractfile("report.md")
        assert member is not None and member.read() == b"# report"
    assert read(s3, f"{base}/tree/deep/b.txt") == b"beta"
    assert result.result("consume") == "# report ['a.txt', 'deep'] beta alpha"
    saved = {a["name"] for a in result.node("produce")["outputs"]["artifacts"]}
    assert saved == {"report", "tree", "flat"}  # the optional one that was not written is left out


MAP_REDUCE = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: fan-}
spec:
  entrypoint: main
  arguments:
    parameters: [{name: parts, value: "3"}]
  templates:
  - name: main
    dag:
      tasks:
      - name: split
        template: split
      - name: square
        depends: split
        template: square
        withParam: "{{tasks.split.outputs.result}}"
        arguments:
          parameters: [{name: part, value: "{{item}}"}]
          artifacts:
          - name: number
            s3: {key: "{{workflow.name}}/parts/{{item}}.txt"}
      - {name: total, depends: square, template: total}
  - name: split
    script:
      image: python:3.11
      command: [python]
      source: |
        import json, os
        os.makedirs("/out/parts")
        for i in range({{workflow.parameters.parts}}):
            open(f"/out/parts/{i}.txt", "w").write(str(i + 2))
        print(json.dumps([str(i) for i in range({{workflow.parameters.parts}})]))
    outputs:
      artifacts:
      - name: parts
        path: /out/parts
        archive: {none: {}}
        s3: {key: "{{workflow.name}}/parts/"}
  - name: square
    inputs:
      parameters: [{name: part}]
      artifacts: [{name: number, path: /in/number.txt}]
    script:
      image: python:3.11
      command: [python]
      source: |
        import os
        os.makedirs("/out", exist_ok=True)
        n = int(open("/in/number.txt").read())
        open("/out/square.txt", "w").write(str(n * n))
    outputs:
      artifacts:
      - name: square
        path: /out/square.txt
        archive: {none: {}}
        s3: {key: "{{workflow.name}}/squares/{{inputs.parameters.part}}.txt"}
  - name: total
    inputs:
      artifacts:
      - name: squares
        path: /in/squares
        s3: {key: "{{workflow.name}}/squares"}
    script:
      image: python:3.11
      command: [python]
      source: |
        import os
        total = sum(int(open(os.path.join("/in/squares", f)).read()) for f in os.listdir("/in/squares"))
        os.makedirs("/out", exist_ok=True)
        open("/out/total.txt", "w").write(str(total))
        print(total)
    outputs:
      artifacts:
      - {name: total, path: /out/total.txt, s3: {key: "{{workflow.name}}/total.tgz"}}
"""


def test_key_only_artifacts_map_and_reduce(tmp_path: Path, endpoint: str, s3: Any) -> None:
    """GIVEN key-only artifacts WHEN a fan-out squares each part THEN the reduce reads the whole key prefix."""
    result = run(tmp_path, MAP_REDUCE, cluster_config(tmp_path, {"main": repository(endpoint)}), "parts=4")
    assert result.phase == "Succeeded", result.status["status"]["message"]
    wf = result.name
    assert {f"{wf}/parts/{i}.txt" for i in range(4)} | {f"{wf}/squares/{i}.txt" for i in range(4)} <= keys(s3)
    assert [read(s3, f"{wf}/squares/{i}.txt") for i in range(4)] == [b"4", b"9", b"16", b"25"]
    assert result.result("total") == "54"
    with tarfile.open(fileobj=io.BytesIO(read(s3, f"{wf}/total.tgz")), mode="r:gz") as tf:
        assert tf.getnames() == ["total.txt"]


REF = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: ref-}
spec:
  entrypoint: write
  artifactRepositoryRef: {key: KEY}
  templates:
  - name: write
    container:
      image: busybox
      command: [sh, -c, "mkdir -p /out && echo kept > /out/note.txt"]
    outputs:
      artifacts: [{name: note, path: /out/note.txt, archive: {none: {}}}]
"""


def test_artifact_repository_ref_picks_another_repository_and_key_format(
    tmp_path: Path, endpoint: str, s3: Any
) -> None:
    """GIVEN spec.artifactRepositoryRef WHEN a pod saves THEN it goes to that repository, at its keyFormat."""
    repos = {
        "main": repository(endpoint),
        "other": repository(endpoint, bucket="other-artifacts", keyFormat="runs/{{workflow.name}}/{{pod.name}}"),
    }
    result = run(tmp_path, REF.replace("KEY", "other"), cluster_config(tmp_path, repos))
    assert result.phase == "Succeeded", result.status["status"]["message"]
    assert keys(s3, "other-artifacts") == {f"runs/{result.name}/{result.node(result.name)['id']}/note.txt"}
    assert keys(s3) == set()


def test_http_git_raw_and_optional_inputs(tmp_path: Path, endpoint: str, s3: Any) -> None:
    """GIVEN http, git, raw (with mode) and an optional missing s3 input WHEN the pod runs THEN each is in place."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "motd.txt").write_text("hello over http")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(served))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo = _git_repo(tmp_path / "repo")
    workflow = f"""
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {{generateName: inputs-}}
spec:
  entrypoint: read
  templates:
  - name: read
    inputs:
      artifacts:
      - name: motd
        path: /in/motd.txt
        http: {{url: "http://127.0.0.1:{server.server_port}/motd.txt"}}
      - name: source
        path: /in/src
        git: {{repo: "{repo}", revision: v1, depth: 1}}
      - name: tool
        path: /in/tool.sh
        mode: 493
        raw: {{data: "#!/bin/sh\\necho tool ran"}}
      - name: maybe
        path: /in/maybe.txt
        optional: true
        s3: {{key: never/written}}
    container:
      image: busybox
      command: [sh, -c]
      args: ["cat /in/motd.txt; echo; cat /in/src/VERSION; /in/tool.sh; test -e /in/maybe.txt || echo no-maybe"]
"""
    try:
        result = run(tmp_path, workflow, cluster_config(tmp_path, {"main": repository(endpoint)}))
    finally:
        server.shutdown()
    assert result.phase == "Succeeded", result.status["status"]["message"]
    assert result.result(result.name).splitlines() == ["hello over http", "v1", "tool ran", "no-maybe"]


def _git_repo(path: Path) -> Path:
    """A repository whose tag v1 has VERSION=v1 and whose main branch has moved on to v2."""

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    path.mkdir()
    git("init", "-q", "-b", "main")
    git("config", "user.email", "test@example.com")
    git("config", "user.name", "test")
    for version in ("v1", "v2"):
        (path / "VERSION").write_text(version + "\n")
        git("add", "VERSION")
        git("commit", "-qm", version)
        if version == "v1":
            git("tag", "v1")
    return path


SUBPATH = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: subpath-}
spec:
  entrypoint: main
  templates:
  - name: main
    steps:
    - - {name: make, template: make}
    - - name: show
        template: show
        arguments:
          artifacts:
          - {name: text, from: "{{steps.make.outputs.artifacts.scratch}}", subPath: greeting.txt}
  - name: make
    container:
      image: busybox
      command: [sh, -c, "echo hi there > /tmp/greeting.txt"]
    outputs:
      artifacts: [{name: scratch, path: /tmp/, archive: {none: {}}}]
  - name: show
    inputs:
      artifacts: [{name: text, path: /tmp/text}]
    container:
      image: busybox
      command: [sh, -c, "cat /tmp/text"]
"""


@pytest.mark.parametrize("with_repository", [False, True])
def test_an_output_of_tmp_itself_is_the_pods_tmp(tmp_path: Path, endpoint: str, s3: Any, with_repository: bool) -> None:
    """GIVEN an output artifact at /tmp/ (it used to copy the host's /tmp into itself: the run hung)
    WHEN it runs, with or without a repository THEN only the pod's file is saved and subPath reads it."""
    cluster = cluster_config(tmp_path, {"main": repository(endpoint)}) if with_repository else None
    result = run(tmp_path, SUBPATH, cluster)
    assert result.phase == "Succeeded", result.status["status"]["message"]
    assert result.result("show") == "hi there"
    if with_repository:
        assert keys(s3) == {f"{result.name}/{result.node('make')['id']}/tmp/greeting.txt"}
    else:
        saved = tmp_path / "runs" / result.name / "artifacts" / result.node("make")["id"] / "scratch"
        assert [p.name for p in saved.iterdir()] == ["greeting.txt"]


ONE_POD = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: bad-}
spec:
  entrypoint: pod
  SPEC
  templates:
  - name: pod
    inputs:
      artifacts: [INPUTS]
    container:
      image: busybox
      command: [sh, -c, "mkdir -p /out && echo x > /out/x.txt"]
    outputs:
      artifacts: [{name: x, path: /out/x.txt}]
"""

BAD = {
    "repository": (
        "artifactRepositoryRef: {key: nowhere}",
        "",
        "main",
        'failed to find any artifact repository for artifact repository ref "#nowhere"',
    ),
    "secret": ("", "", "no-secret", 'secret "absent-secret" (key accesskey) not found'),
    "bucket": ("", "", "no-bucket", "bucket missing-bucket does not exist"),
    "git repository": ("", "{name: src, path: /src, git: {repo: GIT}}", "main", "git repository GIT does not exist"),
    "key": ("", "{name: data, path: /data, s3: {key: not/there}}", "main", "s3 key 'not/there' does not exist"),
    "unconfigured repository": (
        "",
        "{name: data, path: /data, s3: {key: k}}",
        None,
        "no artifact repository is configured",
    ),
}


@pytest.mark.parametrize("missing", sorted(BAD))
def test_a_missing_thing_errors_the_node_naming_it(tmp_path: Path, endpoint: str, s3: Any, missing: str) -> None:
    """GIVEN a repository, secret, bucket, git repository or key that is not there WHEN the pod runs
    THEN the node, and so the workflow, ends in Error (as Argo shows artifact problems) with one line naming
    what is missing.
    """
    spec, inputs, repo, expected = BAD[missing]
    git = str(tmp_path / "no-such-repo")
    repos = {
        "main": repository(endpoint),
        "no-secret": repository(endpoint, secret="absent-secret"),
        "no-bucket": repository(endpoint, bucket="missing-bucket"),
    }
    cluster = cluster_config(tmp_path, repos, default=repo) if repo else None
    workflow = ONE_POD.replace("SPEC", spec).replace("INPUTS", inputs.replace("GIT", git))
    result = run(tmp_path, workflow, cluster)
    assert (result.phase, result.rc) == ("Error", 1)
    node = result.node(result.name)
    assert node["phase"] == "Error"
    assert expected.replace("GIT", git) in node["message"]
    assert "\n" not in node["message"]
    assert keys(s3) == set()
