"""The layer contract of docs/architecture.md, enforced on the real import graph (grimp, as import-linter builds it).

The contracts themselves live in pyproject.toml (`[tool.importlinter]`), so `lint-imports` on the command line and
this test check the same thing. Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("registry", "steps", "workflows")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_every_import_linter_contract_is_kept() -> None:
    # GIVEN the contracts in pyproject.toml WHEN import-linter checks the tree THEN every contract is kept
    # (a subprocess: import-linter configures the logging module of the process it runs in)
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:]


def test_no_module_import_cycles(graph: grimp.ImportGraph) -> None:
    # GIVEN every direct import between our modules (module-level and lazy) WHEN looking for cycles THEN none
    g = nx.DiGraph()
    for module in graph.modules:
        g.add_edges_from((module, imported) for imported in graph.find_modules_directly_imported_by(module))
    # A package importing its own submodules (re-exports in __init__) is not a cycle of design.
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if b.startswith(a + ".") or a.startswith(b + ".")])
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_step_entry_modules_are_the_only_modules_at_the_top_of_steps(graph: grimp.ImportGraph) -> None:
    # GIVEN the modules directly under steps/ WHEN they are not subpackages THEN each defines an Argo template
    top = [m for m in graph.find_children("steps") if not (ROOT / m.replace(".", "/")).is_dir()]
    assert top, "steps/ has no entry modules"
    for module in top:
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        assert "@script(" in source, f"{module} sits at the top of steps/ but is not a step entry module"


def test_a_library_never_imports_a_step_entry_module(graph: grimp.ImportGraph) -> None:
    # GIVEN the step entry modules WHEN any module under a steps/ subpackage imports one THEN that is a violation
    entries = {m for m in graph.find_children("steps") if not (ROOT / m.replace(".", "/")).is_dir()}
    offenders = [
        (m, imported)
        for m in graph.modules
        if m.startswith("steps.") and m not in entries
        for imported in graph.find_modules_directly_imported_by(m)
        if imported in entries
    ]
    assert offenders == []


def test_the_contract_fails_on_a_violation(tmp_path: Path) -> None:
    # GIVEN a copy of a tiny package whose bottom layer imports its top WHEN checked THEN the check notices
    pkg = tmp_path / "demo_layers"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from demo_layers import high\n")
    (pkg / "high.py").write_text("from demo_layers import low\n")
    sys.path.insert(0, str(tmp_path))
    try:
        g = grimp.build_graph("demo_layers", cache_dir=None)
        illegal = g.find_illegal_dependencies_for_layers(layers=["high", "low"], containers={"demo_layers"})
    finally:
        sys.path.remove(str(tmp_path))
    assert illegal, "a bottom layer importing the top layer must be reported"
