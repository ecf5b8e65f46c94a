"""The CLI contract: one line on stderr for any error (a traceback only with --debug), --version, --json on read
commands, an example in every --help, shell completion.

The commands run for real: in-process through `main` where the output is what is checked, as a subprocess where
the process matters (logging configured at import, the installed console script, a shell parsing completion).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from workflows.cli.errors import describe
from workflows.cli.examples import EXAMPLES, commands
from workflows.cli.main import _parser, main

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
CLI = [sys.executable, "-m", "workflows.cli.main"]
# Every command that only reads: each takes --json.
READ_COMMANDS = (
    "lint",
    "registry history",
    "registry list",
    "cron next",
    "status",
    "serving status",
    "evidence show",
    "evidence verify",
    "run",
)


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err


def test_a_typo_in_the_tracking_uri_scheme_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """GIVEN MLFLOW_TRACKING_URI=htpp://... (a typo'd scheme; it used to print a 40-line traceback)
    WHEN `registry history` runs  THEN one line names the URI, the variable to fix, and the exit is 1."""
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htpp://localhost:5000")
    monkeypatch.delenv("LLMRELEASE_DEBUG", raising=False)

    assert main(["registry", "history", "demo-qa"]) == 1

    err = _one_line(capsys.readouterr().err)
    assert err.startswith("llmrelease registry: ") and "htpp://localhost:5000" in err and "MLFLOW_TRACKING_URI" in err


def test_an_output_folder_below_a_regular_file_is_one_line_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """GIVEN a path below a regular file (`render --argo-dir` there used to print 15 lines)
    WHEN render and evidence keygen are given it  THEN each says in one line which file is in the way, exit 1."""
    monkeypatch.delenv("LLMRELEASE_DEBUG", raising=False)
    (tmp_path / "afile").write_text("not a folder")

    assert main(["render", "--argo-dir", str(tmp_path / "afile" / "argo")]) == 1
    render_err = _one_line(capsys.readouterr().err)
    assert main(["evidence", "keygen", str(tmp_path / "afile" / "keys" / "k.pem")]) == 1
    keygen_err = _one_line(capsys.readouterr().err)

    for err, command in ((render_err, "render"), (keygen_err, "evidence")):
        assert err.startswith(f"llmrelease {command}: ")
        assert f"{tmp_path / 'afile'} is a file, not a folder" in err


@pytest.mark.parametrize("how", ["--debug", "LLMRELEASE_DEBUG=1"])
def test_debug_shows_the_traceback_then_the_same_line(tmp_path: Path, how: str) -> None:
    """GIVEN --debug (before or after the command) or LLMRELEASE_DEBUG=1
    WHEN a command fails  THEN the traceback is printed, then the one line, and the exit code is the same."""
    (tmp_path / "afile").write_text("x")
    target = str(tmp_path / "afile" / "k.pem")
    env = {"LLMRELEASE_DEBUG": "1"} if how != "--debug" else {"LLMRELEASE_DEBUG": ""}
    argv = ["evidence", "keygen", target] + (["--debug"] if how == "--debug" else [])

    quiet, loud = _cli("evidence", "keygen", target, env={"LLMRELEASE_DEBUG": ""}), _cli(*argv, env=env)

    assert quiet.returncode == loud.returncode == 1
    _one_line(quiet.stderr)
    assert loud.stderr.startswith("Traceback (most recent call last):")
    assert loud.stderr.endswith(quiet.stderr)
    assert _cli("--debug", *argv[:3], env=env).stderr.startswith("Traceback")


def test_an_unexpected_error_says_its_type_and_points_at_debug() -> None:
    """GIVEN an error no one anticipated (a bug)  WHEN described for the user
    THEN one line: 'unexpected <Type>: <message>; rerun with --debug', exit 1; multi-line messages are joined."""
    line, code = describe(KeyError("spec\nmissing"))

    assert code == 1 and "\n" not in line
    assert line == "unexpected KeyError: 'spec\\nmissing'; rerun with --debug for the traceback"
    line, _ = describe(RuntimeError("first\n  second"))
    assert line == "unexpected RuntimeError: first second; rerun with --debug for the traceback"


def test_a_release_error_keeps_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a usage mistake the commands refuse (a SpecError, exit code 2)  WHEN run  THEN one line, exit 2."""
    assert main(["cron", "next", "nightly-regression", "-n", "0", "--argo-dir", str(ARGO)]) == 2
    assert _one_line(capsys.readouterr().err).startswith("llmrelease cron: -n 0")


def test_version_is_the_installed_distributions() -> None:
    """GIVEN the installed package  WHEN `llmrelease --version`  THEN it prints the distribution's version."""
    result = _cli("--version")

    assert result.returncode == 0 and result.stdout.strip() == f"llmrelease {version('llmrelease')}"


def test_every_command_has_an_example_in_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN every command and command group of the parser
    WHEN its --help is printed  THEN it ends with an example of itself; the examples table has no stale entry."""
    every = commands(_parser())
    assert set(EXAMPLES) == set(every)

    for words in every:
        with pytest.raises(SystemExit) as exited:
            main([*words.split(), "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0
        assert "example:\n  " in out, f"`llmrelease {words} --help` shows no example"
        example = out.split("example:\n", 1)[1]
        assert f"llmrelease {words}".strip() in example, f"the example of `{words}` does not run it"


def test_every_read_command_takes_json() -> None:
    """GIVEN the commands that only read  WHEN their options are listed  THEN each has --json."""
    every = commands(_parser())

    for words in READ_COMMANDS:
        options = {o for action in every[words]._actions for o in action.option_strings}
        assert "--json" in options, f"`llmrelease {words}` has no --json"


def test_lint_and_cron_next_print_json(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN the rendered manifests  WHEN lint --json and cron next --json run
    THEN stdout is JSON holding what the text output says (files, problems; schedules, zone, times)."""
    files = sorted(str(p) for p in ARGO.glob("*.yaml"))

    assert main(["lint", "--json", *files]) == 0
    linted = json.loads(capsys.readouterr().out)
    assert linted["files"] == files and linted["errors"] == 0

    args = ["cron", "next", "nightly-regression", "-n", "3", "--after", "2026-11-23T00:00:00+00:00", "--argo-dir"]
    assert main([*args, str(ARGO), "--json"]) == 0
    fired = json.loads(capsys.readouterr().out)
    assert main([*args, str(ARGO)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert fired["name"] == "nightly-regression" and len(fired["times"]) == 3
    assert fired["times"] == text[1:] and fired["timezone"] in text[0]


def test_lint_json_reports_problems_and_still_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a WorkflowTemplate whose entrypoint names no template  WHEN lint --json  THEN the problem is in the JSON
    with its severity and the exit code is 2, as without --json."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: WorkflowTemplate\nmetadata: {name: bad}\n"
        "spec: {entrypoint: nowhere, templates: [{name: main, suspend: {}}]}\n"
    )

    assert main(["lint", "--json", str(bad)]) == 2

    report = json.loads(capsys.readouterr().out)
    assert report["errors"] >= 1 and all(p["file"] == str(bad) for p in report["problems"])
    assert any(p["severity"] == "error" and "nowhere" in p["message"] for p in report["problems"])


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_parse_in_their_shell_and_know_the_commands(shell: str) -> None:
    """GIVEN `llmrelease completion bash|zsh`  WHEN the script is checked by the shell (-n: parse only)
    THEN it parses and completes the top-level commands and their subcommands."""
    result = _cli("completion", shell)

    assert result.returncode == 0 and result.stderr == ""
    for word in ("registry", "history", "serving", "rollback", "completion", "--json"):
        assert word in result.stdout
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed: the script was generated but not parsed")
    parsed = subprocess.run([binary, "-n"], input=result.stdout, capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr


def test_mlflow_logging_stays_off_the_terminal(tmp_path: Path) -> None:
    """GIVEN a fresh local MLflow store (MLflow creates and migrates its tables, logging at INFO)
    WHEN `llmrelease registry list` runs in a new process  THEN stderr is empty and stdout is only the answer."""
    env = {"LLMRELEASE_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": "", "LLMRELEASE_DEBUG": ""}

    result = _cli("registry", "list", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("no registered models yet") and result.stdout.count("\n") == 1
    assert (tmp_path / "home" / "mlflow.db").is_file()
