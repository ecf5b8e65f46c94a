"""The step contract: `run_step`, `StepParams` and the pod paths of steps.core.entry."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from registry.errors import PolicyError, RegistryError, SpecError
from steps.core.artifacts import ROOT
from steps.core.entry import DEBUG_ENV, POD_ROOT_ENV, PROFILE_ENV, StepParams, in_pod, process_age_s, run_step


def _raise(error: Exception) -> None:
    raise error


def test_run_step_returns_what_the_body_returns(capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a body that succeeds WHEN run_step runs it THEN its value comes back, stdout stays empty (it is the
    step's result) and stderr has one timing line: the process's start-up before the body, and the body."""
    assert run_step("deploy", lambda: {"ok": 1}) == {"ok": 1}
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(r"deploy: timing: start-up \d+\.\d\ds, work \d+\.\d\ds\n", err), err
    assert run_step("deploy", lambda: 2, timed=False) == 2 and capsys.readouterr().err == ""


def test_profile_prints_the_slowest_calls_of_the_body(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN LLMRELEASE_PROFILE=1 WHEN a step's body runs THEN its cProfile, naming the body's own calls, is on
    stderr before the timing line; without it there is none."""

    def slow_part() -> int:
        return sum(range(200_000))

    monkeypatch.setenv(PROFILE_ENV, "1")
    assert run_step("gate", slow_part) == sum(range(200_000))
    err = capsys.readouterr().err
    assert err.startswith("gate: profile:") and "slow_part" in err and "gate: timing:" in err
    monkeypatch.delenv(PROFILE_ENV)
    run_step("gate", slow_part)
    assert "profile" not in capsys.readouterr().err


def test_process_age_is_the_time_since_this_process_started() -> None:
    """/proc gives the process's start: at least the time this test process has run, and not more than a day."""
    age = process_age_s()
    assert age is not None and 0.0 < age < 86_400


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (SpecError("spec x: bad"), 2),
        (RegistryError("version 3: gone"), 1),
        (PolicyError("licence gpl:\nnot allowed"), 1),
    ],
)
def test_a_release_error_is_one_prefixed_line_and_its_exit_code(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a body raising a ReleaseError (a SpecError exits 2, the others 1; one message spans two lines)
    WHEN run_step runs it
    THEN stderr is exactly one line `<step>: <message>` and the process exits with the error's exit_code.
    """
    with pytest.raises(SystemExit) as exited:
        run_step("gate", lambda: _raise(error))
    assert exited.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err == f"gate: {' '.join(str(error).split())}\n"


def test_an_unexpected_exception_is_one_line_asking_for_a_bug_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a body raising a KeyError and LLMRELEASE_DEBUG unset
    WHEN run_step runs it
    THEN one line names the type and the message, asks for a bug report, and the exit code is 1.
    """
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        run_step("canary", lambda: dict[str, int]()["weight"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "canary: unexpected KeyError: 'weight'; report this bug\n"


def test_debug_re_raises_an_unexpected_exception_but_not_a_release_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN LLMRELEASE_DEBUG=1 WHEN a body raises a KeyError, then a SpecError
    THEN the KeyError propagates (its traceback is wanted), the SpecError is still one line and exit 2.
    """
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(KeyError):
        run_step("canary", lambda: dict[str, int]()["weight"])
    with pytest.raises(SystemExit) as exited:
        run_step("canary", lambda: _raise(SpecError("x")))
    assert exited.value.code == 2


class _Params(StepParams):
    step: ClassVar[str] = "latency"

    rate: float = 4.0
    requests: int | None = None
    work_dir: Path


def test_step_params_parse_typed_values_and_refuse_a_bad_one_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN typed parameters WHEN valid values are given THEN they are typed;
    WHEN rate='abc' THEN one line names the parameter and its value, exit 2 (a SpecError's code);
    AND an optional field defaulting to None renders with the Argo default `null` (not a required parameter).
    """
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    ok = _Params.model_validate({"rate": 2, "requests": None, "work_dir": "/w"})
    assert ok.rate == 2.0 and ok.requests is None and ok.work_dir == Path("/w")
    with pytest.raises(SystemExit) as exited:
        _Params.model_validate({"rate": "abc", "work_dir": "/w"})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latency: parameter rate='abc' is invalid (")
    defaults = {p.name: p.default for p in _Params._get_parameters()}
    assert defaults == {"rate": "4.0", "requests": "null", "work_dir": None}


def test_in_pod_maps_container_paths_under_the_pod_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GIVEN LLMRELEASE_POD_ROOT unset, equal to ROOT, or a private folder
    WHEN in_pod maps an artifact path under ROOT and one elsewhere
    THEN only a private folder changes the path under ROOT; other paths never change.
    """
    artifact = f"{ROOT}/inputs/quality-report.json"
    monkeypatch.delenv(POD_ROOT_ENV, raising=False)
    assert in_pod(artifact) == Path(artifact)
    monkeypatch.setenv(POD_ROOT_ENV, ROOT)
    assert in_pod(artifact) == Path(artifact)
    monkeypatch.setenv(POD_ROOT_ENV, str(tmp_path))
    assert in_pod(artifact) == tmp_path / "inputs" / "quality-report.json"
    assert in_pod("/etc/hosts") == Path("/etc/hosts")


_FREEZE_PROBE = """
import gc
import sys

from steps.core.entry import run_step


def probe(fail: str = "") -> None:
    frozen_before = gc.get_freeze_count()
    try:
        run_step("probe", lambda: sys.exit(3) if fail else None, timed=False)
    finally:
        print(frozen_before, gc.get_freeze_count())
"""


@pytest.mark.parametrize("fail", ["", "yes"])
def test_a_pod_process_freezes_its_objects_around_the_step_and_a_test_does_not(tmp_path: Path, fail: str) -> None:
    """GIVEN a step entry run as a pod runs it (`python -m hera.workflows.runner`) WHEN it ends, by success or by an
    exit THEN the objects alive then are frozen (`gc.freeze`, so the interpreter's exit does not collect the
    imported modules again) and the exit code is the step's; called in this (test) process nothing is frozen."""
    (tmp_path / "freeze_probe.py").write_text(_FREEZE_PROBE)
    args = tmp_path / "args.json"
    args.write_text(json.dumps([{"name": "fail", "value": fail}]))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{Path(__file__).parents[2]}"}
    done = subprocess.run(
        [sys.executable, "-m", "hera.workflows.runner", "-e", "freeze_probe:probe", str(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == (3 if fail else 0), done.stderr
    before, after = (int(x) for x in done.stdout.split()[:2])
    assert before == 0 and after > 10_000, done.stdout

    frozen = gc.get_freeze_count()
    assert run_step("probe", lambda: 1, timed=False) == 1
    assert gc.get_freeze_count() == frozen
