"""Pod features of Argo's examples under the local runner: image entrypoints, volumes, init containers, `{{=...}}`.

Our own workflows (never copies of Argo's files); every container is a real process, under `--isolation none` and,
where bubblewrap can run, `--isolation bwrap`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.runner_support import BWRAP_PROBLEM, ISOLATIONS
from workflows.runner import RunOptions, RunResult, run_workflow

PROBLEM = BWRAP_PROBLEM

ENTRYPOINTS = """
metadata: {generateName: entrypoints-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: write, template: write}
        - - name: check
            template: check
            arguments: {parameters: [{name: said, value: "{{steps.write.outputs.parameters.said}}"}]}
          - {name: cow, template: cow}
    - name: write
      container: {image: argoproj/argosay:v2, args: [echo, bonjour, /mnt/out/said]}
      outputs: {parameters: [{name: said, valueFrom: {path: /mnt/out/said}}]}
    - name: check
      inputs: {parameters: [{name: said}]}
      container: {image: argoproj/argosay:v2, args: [exit, "{{=inputs.parameters.said == 'bonjour' ? 0 : 3}}"]}
    - name: cow
      container: {image: docker/whalesay:latest, args: [moo]}
"""

VOLUMES = """
metadata: {generateName: volumes-}
spec:
  entrypoint: main
  volumeClaimTemplates:
    - metadata: {name: shared}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
  volumes:
    - {name: scratch, emptyDir: {}}
    - {name: settings, configMap: {name: moods}}
    - {name: kept, persistentVolumeClaim: {claimName: ledger}}
  templates:
    - name: main
      steps:
        - - {name: produce, template: produce}
        - - {name: consume, template: consume}
    - name: produce
      initContainers:
        - {name: prime, image: busybox, command: [sh, -c, "echo primed > /scratch/note"], mirrorVolumeMounts: true}
      container:
        image: busybox
        command: [sh, -c, "cat /scratch/note > /data/note; cat /config/moods/today >> /data/note; echo run >>/keep/log"]
        volumeMounts:
          - {name: scratch, mountPath: /scratch}
          - {name: shared, mountPath: /data}
          - {name: settings, mountPath: /config/moods}
          - {name: kept, mountPath: /keep}
    - name: consume
      container:
        image: busybox
        command: [sh, -c, "cat /data/note; test ! -e /scratch/note"]
        volumeMounts:
          - {name: shared, mountPath: /data}
          - {name: scratch, mountPath: /scratch}
"""

INIT_FAILS = """
metadata: {generateName: init-fails-}
spec:
  entrypoint: main
  templates:
    - name: main
      initContainers:
        - {name: gate, image: busybox, command: [sh, -c, "exit 4"]}
      container: {image: busybox, command: [sh, -c, "echo main ran > /tmp/ran"]}
"""

MISSING = """
metadata: {generateName: missing-}
spec:
  entrypoint: main
  volumes: [VOLUME]
  templates:
    - name: main
      container:
        image: busybox
        command: [true]
        volumeMounts: [{name: v, mountPath: /v}]
"""


def _run(tmp_path: Path, text: str, isolation: str = "none") -> RunResult:
    """Run a Workflow with a cluster config holding ConfigMap `moods` and PersistentVolumeClaim `ledger`."""
    config = tmp_path / "cluster"
    config.mkdir(exist_ok=True)
    (config / "objects.yaml").write_text(
        "kind: ConfigMap\nmetadata: {name: moods}\ndata: {today: sunny}\n---\n"
        "kind: PersistentVolumeClaim\nmetadata: {name: ledger}\nspec: {accessModes: [ReadWriteOnce]}\n"
    )
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", **yaml.safe_load(textwrap.dedent(text))}
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(yaml.safe_dump(doc))
    options = RunOptions(runs_dir=tmp_path / "runs", echo=False, cluster_config=config, isolation=isolation)
    return run_workflow(str(workflow), options, argo_dir=tmp_path / "argo")


def _nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_argosay_and_whalesay_entrypoints_and_expression_tags(tmp_path: Path, isolation: str) -> None:
    """GIVEN argosay containers without `command` (echo to a file, exit with an `{{=...}}` code) and whalesay
    WHEN run THEN Succeeded: the file became the output, the expression chose exit 0, the cow spoke."""
    result = _run(tmp_path, ENTRYPOINTS, isolation)
    nodes = _nodes(result)
    assert result.phase == "Succeeded", result.message
    assert nodes["write"]["outputs"]["parameters"] == [{"name": "said", "value": "bonjour"}]
    assert "< moo >" in nodes["cow"]["outputs"]["result"]


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_volumes_and_init_containers(tmp_path: Path, isolation: str) -> None:
    """GIVEN an init container priming an emptyDir, a claim template shared by two steps, a configMap volume and
    an existing claim WHEN run twice THEN the second step reads what the first wrote in the claim, the emptyDir
    is per pod, and the existing claim keeps its data across workflows."""
    for _ in (1, 2):
        result = _run(tmp_path, VOLUMES, isolation)
        assert result.phase == "Succeeded", result.message
        assert _nodes(result)["consume"]["outputs"]["result"] == "primed\nsunny"
    assert (tmp_path / "volumes" / "ledger" / "log").read_text() == "run\nrun\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_failing_init_container_fails_the_pod_before_main(tmp_path: Path, isolation: str) -> None:
    """GIVEN an init container that exits 4 WHEN run THEN the pod is Failed naming it and main never ran."""
    result = _run(tmp_path, INIT_FAILS, isolation)
    assert result.phase == "Failed"
    pod = _nodes(result)[result.name]
    assert pod["message"].startswith("init container gate: exit code 4"), pod["message"]
    assert "result" not in pod.get("outputs", {})


@pytest.mark.parametrize(
    ("volume", "named"),
    [
        ("{name: other, emptyDir: {}}", 'volume "v" not found'),
        ("{name: v, persistentVolumeClaim: {claimName: absent}}", 'persistentvolumeclaim "absent" not found'),
        ("{name: v, configMap: {name: absent}}", 'configmap "absent" not found'),
        ("{name: v, nfs: {server: x, path: /}}", "volume type nfs cannot be provided locally"),
    ],
)
def test_a_missing_volume_is_an_error_naming_it(tmp_path: Path, volume: str, named: str) -> None:
    """GIVEN a mount of an undeclared volume, a missing claim or ConfigMap, or an unsupported volume type
    WHEN run THEN the pod and workflow end Error with one line naming what is missing."""
    result = _run(tmp_path, MISSING.replace("VOLUME", volume))
    assert result.phase == "Error"
    message = _nodes(result)[result.name]["message"]
    assert named in message and "\n" not in message, message


@pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))
def test_an_output_folder_the_pod_creates_itself(tmp_path: Path) -> None:
    """GIVEN an output artifact in /made/here/ that the script creates with mkdir (not there before, as in a
    container) WHEN run under bwrap THEN Succeeded with the artifact saved."""
    text = """
    metadata: {generateName: mkdir-}
    spec:
      entrypoint: main
      templates:
        - name: main
          script:
            image: python:3.11-alpine
            command: [python]
            source: |
              import os
              os.mkdir("/made/here")
              open("/made/here/x.txt", "w").write("made")
          outputs: {artifacts: [{name: x, path: /made/here/x.txt}]}
    """
    result = _run(tmp_path, text, "bwrap")
    assert result.phase == "Succeeded", result.message
    assert _nodes(result)[result.name]["outputs"]["artifacts"][0]["name"] == "x"
