"""The local runner on real workflows of the shapes Argo's own examples have (our own YAML, not Argo's files).

Every leaf runs as a real subprocess; nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from registry.errors import WorkflowError
from workflows.runner import RunOptions, RunResult, run_workflow

HERE = Path(__file__).parent / "runner_workflows"


def run(name: str, tmp_path: Path, **options: Any) -> RunResult:
    opts = RunOptions(runs_dir=tmp_path / "runs", echo=False, **options)
    return run_workflow(str(HERE / name), opts, argo_dir=tmp_path / "argo")


def nodes(result: RunResult) -> dict[str, dict[str, Any]]:
    return {n["displayName"]: n for n in result.status["status"]["nodes"].values()}


def outputs(node: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in node.get("outputs", {}).get("parameters", [])}


def test_diamond_dag_passes_results_between_tasks(tmp_path: Path) -> None:
    """GIVEN a diamond DAG WHEN it runs THEN every task succeeds and D sees B's and C's stdout."""
    result = run("dag-diamond.yaml", tmp_path)
    assert result.phase == "Succeeded"
    by_name = nodes(result)
    assert {"A", "B", "C", "D"} <= by_name.keys()
    assert by_name["D"]["outputs"]["result"] == "B+C"
    assert by_name["D"]["startedAt"] >= by_name["B"]["finishedAt"]
    stdout = result.run_dir / "nodes" / by_name["A"]["id"] / "stdout"
    assert stdout.read_text() == "A\n"


@pytest.mark.parametrize(("side", "ran", "skipped"), [("heads", "heads", "tails"), ("tails", "tails", "heads")])
def test_conditionals_follow_the_coin(tmp_path: Path, side: str, ran: str, skipped: str) -> None:
    """GIVEN a steps workflow with `when` conditions WHEN the coin says SIDE THEN only that branch runs."""
    result = run("steps-conditionals.yaml", tmp_path, parameters={"side": side})
    assert result.phase == "Succeeded"
    by_name = nodes(result)
    assert by_name[ran]["phase"] == "Succeeded"
    assert by_name[skipped]["phase"] == "Skipped"
    assert by_name["big"]["phase"] == ("Succeeded" if side == "heads" else "Skipped")


def test_parameter_outside_enum_is_refused(tmp_path: Path) -> None:
    """GIVEN an enum parameter WHEN given a value outside it THEN a clear error names the parameter."""
    with pytest.raises(WorkflowError, match="workflow parameter 'side'.*'edge' is not one of heads, tails"):
        run("steps-conditionals.yaml", tmp_path, parameters={"side": "edge"})


def test_unknown_parameter_is_refused(tmp_path: Path) -> None:
    """GIVEN a workflow WHEN given -p for a parameter it does not declare THEN the error lists what it takes."""
    with pytest.raises(WorkflowError, match="unknown parameter.*colour.*takes side"):
        run("steps-conditionals.yaml", tmp_path, parameters={"colour": "red"})


def test_loops_over_items_params_and_sequences(tmp_path: Path) -> None:
    """GIVEN withItems, withParam and withSequence WHEN the DAG runs THEN each fans out and aggregates."""
    result = run("loops.yaml", tmp_path)
    assert result.phase == "Succeeded"
    by_name = nodes(result)
    assert len(by_name["fan-out"]["children"]) == 4
    assert json.loads(by_name["count"]["outputs"]["result"]) == ["n=1", "n=2", "n=3", "n=4"]
    assert by_name['items(0:{"os": "debian", "version": 12})']["outputs"]["result"] == "debian-12"
    assert "seq(2:node-03)" in by_name


def test_output_parameters_and_aggregation(tmp_path: Path) -> None:
    """GIVEN outputs from valueFrom.path WHEN later steps use them THEN values, defaults and aggregates flow."""
    result = run("output-parameters.yaml", tmp_path)
    assert result.phase == "Succeeded"
    by_name = nodes(result)
    assert outputs(by_name["generate"]) == {"hello-param": "hello world", "absent": "fallback"}
    assert by_name["consume"]["outputs"]["result"] == "hello world"
    assert json.loads(by_name["summary"]["outputs"]["result"]) == ["odd", "even", "odd", "even"]


def test_retries_with_backoff_finally_succeed(tmp_path: Path) -> None:
    """GIVEN a step failing twice WHEN retried with backoff 0.2s x2 THEN attempt 2 succeeds after >= 0.6 s."""
    started = time.monotonic()
    result = run("retries.yaml", tmp_path, parameters={"succeed-on": "2"})
    assert result.phase == "Succeeded"
    by_name = nodes(result)
    assert [by_name[f"flaky({i})"]["phase"] for i in range(3)] == ["Failed", "Failed", "Succeeded"]
    assert "flaky(3)" not in by_name
    assert time.monotonic() - started >= 0.6


def test_retries_that_exhaust_fail_the_workflow(tmp_path: Path) -> None:
    """GIVEN a step that never succeeds WHEN its 3 retries are used THEN 4 attempts ran and the workflow fails."""
    result = run("retries.yaml", tmp_path, parameters={"succeed-on": "9"})
    assert result.phase == "Failed"
    by_name = nodes(result)
    assert [by_name[f"flaky({i})"]["phase"] for i in range(4)] == ["Failed"] * 4
    assert by_name["flaky"]["type"] == "Retry"


def test_exit_handler_sees_failed_status_and_failures(tmp_path: Path) -> None:
    """GIVEN a failing entrypoint WHEN the exit handler runs THEN it sees Failed and the failed node."""
    out = tmp_path / "exit.txt"
    result = run("exit-handler.yaml", tmp_path, parameters={"out": str(out)})
    assert result.phase == "Failed"
    text = out.read_text()
    assert text.startswith("status=Failed")
    failures = json.loads(text.split("failures=", 1)[1])
    assert failures[0]["templateName"] == "intentional-fail"
    by_name = nodes(result)
    assert by_name["cry"]["phase"] == "Succeeded"
    assert by_name["celebrate"]["phase"] == "Skipped"


def test_suspend_without_resume_stays_running(tmp_path: Path) -> None:
    """GIVEN a suspend step WHEN not resumed THEN the workflow stays Running (suspended), saying how to resume."""
    result = run("suspend.yaml", tmp_path)
    assert result.phase == "Running"
    assert f"llmrelease resume {result.name}" in result.message
    assert nodes(result)["approve"]["phase"] == "Running"
    assert "release" not in nodes(result)


def test_suspend_resumed_with_supplied_value(tmp_path: Path) -> None:
    """GIVEN a suspend step with a supplied output WHEN resumed with it THEN the next step sees the value."""
    result = run("suspend.yaml", tmp_path, resume=frozenset({"approve"}), supplied={"approve.approver": "alice"})
    assert result.phase == "Succeeded"
    assert nodes(result)["release"]["outputs"]["result"] == "approved by alice"


def test_resume_without_required_supplied_value_fails(tmp_path: Path) -> None:
    """GIVEN a resumed suspend WHEN its supplied output is missing THEN it fails naming the --supply flag."""
    result = run("suspend.yaml", tmp_path, resume=frozenset({"approve"}))
    assert result.phase == "Failed"
    assert "--supply approve.approver=VALUE" in result.message


def test_artifacts_pass_and_deadline_is_enforced(tmp_path: Path) -> None:
    """GIVEN artifact passing and a 1 s deadline on a 30 s sleep WHEN run THEN the artifact arrives, the sleep
    fails fast, and the task depending on slow.Failed handles it so the DAG succeeds."""
    started = time.monotonic()
    result = run("artifacts-deadline.yaml", tmp_path)
    assert time.monotonic() - started < 10
    by_name = nodes(result)
    assert by_name["consume"]["outputs"]["result"] == "artifact body"
    assert by_name["slow"]["phase"] == "Failed"
    assert "deadline" in by_name["slow"]["message"]
    assert by_name["after-slow"]["outputs"]["result"] == "raw data"
    assert result.phase == "Succeeded"


def test_cluster_only_fields_are_refused_up_front(tmp_path: Path) -> None:
    """GIVEN a workflow with hostNetwork WHEN run THEN it is refused before anything runs, naming the field."""
    wf = tmp_path / "vol.yaml"
    wf.write_text("""
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: vol-}
spec:
  entrypoint: main
  hostNetwork: true
  templates:
  - name: main
    container: {image: alpine, command: [sh, -c, "touch {{workflow.parameters.marker}}"]}
  arguments: {parameters: [{name: marker, value: /nonexistent/marker}]}
""")
    with pytest.raises(WorkflowError, match="cannot run spec.hostNetwork"):
        run_workflow(str(wf), RunOptions(runs_dir=tmp_path / "runs", echo=False), argo_dir=tmp_path)


def test_cli_exit_codes_and_json_status(tmp_path: Path) -> None:
    """GIVEN the installed CLI WHEN a workflow fails THEN exit 1 and --json prints the Argo-shaped status."""
    cmd = [
        sys.executable,
        "-m",
        "workflows.cli.main",
        "run",
        str(HERE / "retries.yaml"),
        "-p",
        "succeed-on=0",
        "--json",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--isolation",
        "none",
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"]["phase"] == "Succeeded"
    cmd[6] = "succeed-on=7"
    bad = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["status"]["phase"] == "Failed"


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    """GIVEN a target that does not exist WHEN run from the CLI THEN one line on stderr and exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli.main", "run", "no-such-template", "--argo-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "no workflow by that name" in proc.stderr


def test_artifact_paths_use_inputs_and_parallel_pods_do_not_share_files(tmp_path: Path) -> None:
    """GIVEN two parallel pods writing the same declared path pattern /tmp/out/report-{{inputs.parameters.kind}}.txt
    WHEN a consumer reads both as artifacts THEN each artifact holds its own pod's content, and nothing was written
    to the real /tmp/out (each pod has a private root for its declared paths)."""
    wf = tmp_path / "paths.yaml"
    wf.write_text("""
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: paths-}
spec:
  entrypoint: main
  templates:
  - name: main
    dag:
      tasks:
      - {name: a, template: write, arguments: {parameters: [{name: kind, value: quality}]}}
      - {name: b, template: write, arguments: {parameters: [{name: kind, value: safety}]}}
      - name: read
        depends: a && b
        template: read
        arguments:
          artifacts:
          - {name: first, from: "{{tasks.a.outputs.artifacts.report}}"}
          - {name: second, from: "{{tasks.b.outputs.artifacts.report}}"}
  - name: write
    inputs: {parameters: [{name: kind}]}
    container:
      image: alpine
      command:
      - sh
      - -c
      - "mkdir -p /tmp/lt-out; echo {{inputs.parameters.kind}} > /tmp/lt-out/r-{{inputs.parameters.kind}}.txt"
    outputs: {artifacts: [{name: report, path: "/tmp/lt-out/r-{{inputs.parameters.kind}}.txt"}]}
  - name: read
    inputs:
      artifacts:
      - {name: first, path: /tmp/llmr-test-in/first.txt}
      - {name: second, path: /tmp/llmr-test-in/second.txt}
    container: {image: alpine, command: [sh, -c, "cat /tmp/llmr-test-in/first.txt /tmp/llmr-test-in/second.txt"]}
""")
    result = run_workflow(str(wf), RunOptions(runs_dir=tmp_path / "runs", echo=False), argo_dir=tmp_path)
    assert result.phase == "Succeeded", result.message
    assert nodes(result)["read"]["outputs"]["result"] == "quality\nsafety"
    assert not Path("/tmp/lt-out").exists()


_DEPENDS_DAG = """
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: depends-}
spec:
  entrypoint: main
  templates:
  - name: main
    dag:
      tasks:
      - {name: ok, template: pass}
      - {name: bad, template: fail, continueOn: {failed: true}}
      - {name: probe, template: pass, depends: "EXPR"}
  - name: pass
    container: {image: alpine, command: [sh, -c, "echo ran"]}
  - name: fail
    container: {image: alpine, command: [sh, -c, "exit 3"]}
"""


@pytest.mark.parametrize(
    ("expr", "fault", "probe"),
    [
        ("ok", None, "Succeeded"),
        ("ok.Succeeded && bad.Failed", None, "Succeeded"),
        ("(ok.Failed || bad.Failed) && !bad.Skipped", None, "Succeeded"),
        ("bad", None, "Omitted"),
        ("!ok.Succeeded || bad.Succeeded", None, "Omitted"),
        ("ok &&", "expression ends early", None),
        ("ok.Done", "unknown result .Done", None),
        ("ok == bad", "unexpected '== bad'", None),
        ("(ok || bad.Failed", "missing ')'", None),
    ],
)
def test_lint_and_runner_read_depends_alike(tmp_path: Path, expr: str, fault: str | None, probe: str | None) -> None:
    """GIVEN a DAG whose task `probe` depends on EXPR (task `ok` succeeds, `bad` fails and is continued on)
    WHEN `llmrelease lint` checks it and the runner runs it without the lint in front
    THEN both accept a valid EXPR (the runner runs or omits `probe` as Argo would), and both refuse an invalid
    one with the same fault."""
    from workflows.argo.lint import lint_files
    from workflows.argo.manifests import load_library, resolve_workflow
    from workflows.runner.engine import Runner

    wf = tmp_path / "depends.yaml"
    wf.write_text(_DEPENDS_DAG.replace("EXPR", expr))
    problems = [str(p) for p in lint_files([wf])]
    library = load_library(tmp_path / "argo")
    workflow = resolve_workflow(str(wf), library)
    result = Runner(workflow, RunOptions(runs_dir=tmp_path / "runs", echo=False), library.templates_by_name()).run()
    if fault is None:
        assert problems == []
        assert result.phase == "Succeeded", result.message
        assert nodes(result)["probe"]["phase"] == probe
    else:
        assert len(problems) == 1 and f"depends {expr!r} does not parse: {fault}" in problems[0]
        assert result.phase == "Error" and f"task probe: depends {expr!r} does not parse: {fault}" in result.message
