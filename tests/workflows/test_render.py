"""Golden renders: argo/ is exactly what the Hera modules produce, and every object is valid Argo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from workflows.argo.lint import lint_files
from workflows.argo.render import check_rendered, render_all

ROOT = Path(__file__).resolve().parents[2]
ARGO = ROOT / "argo"


def test_committed_argo_matches_a_fresh_render() -> None:
    """GIVEN the committed argo/ WHEN rendered afresh THEN no file differs."""
    assert check_rendered(ARGO) == []


def test_check_names_changed_missing_and_stale_files(tmp_path: Path) -> None:
    """GIVEN a copy of argo/ with one file edited, one removed and one extra WHEN checked THEN all three are named."""
    copy = tmp_path / "argo"
    shutil.copytree(ARGO, copy)
    files = sorted(p.name for p in copy.glob("*.yaml"))
    edited = copy / files[0]
    edited.write_text(edited.read_text().replace("entrypoint:", "entrypoint:  ", 1) + "\n# drift\n")
    (copy / "stale.workflowtemplate.yaml").write_text("kind: WorkflowTemplate\n")
    differ = check_rendered(copy)
    assert files[0] in differ
    assert "stale.workflowtemplate.yaml" in differ
    if len(files) > 1:
        (copy / files[1]).unlink()
        assert files[1] in check_rendered(copy)


def test_render_check_cli_fails_on_drift(tmp_path: Path) -> None:
    """GIVEN a drifted argo dir WHEN `llmrelease render --check` runs THEN it exits 1 naming the file."""
    copy = tmp_path / "argo"
    shutil.copytree(ARGO, copy)
    target = sorted(copy.glob("*.yaml"))[0]
    target.write_text(target.read_text() + "# hand edit\n")
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.cli.main", "render", "--check", "--argo-dir", str(copy)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert target.name in proc.stderr


def test_every_rendered_object_lints_clean() -> None:
    """GIVEN the rendered argo/ WHEN linted offline (schema + references) THEN no errors."""
    problems = [p for p in lint_files(sorted(ARGO.glob("*.yaml"))) if p.severity == "error"]
    assert problems == []


def test_rendered_objects_carry_ui_metadata() -> None:
    """GIVEN each WorkflowTemplate WHEN its parameters are read THEN each has a description for the Argo UI form."""
    for text in render_all().values():
        doc = yaml.safe_load(text)
        if doc["kind"] != "WorkflowTemplate":
            continue
        for param in doc["spec"].get("arguments", {}).get("parameters", []):
            assert param.get("description"), f"{doc['metadata']['name']}: parameter {param['name']} has no description"
