"""Dependencies declared honestly: every third-party import of the shipped code is a declared runtime dependency.

The shipped code is registry/, steps/ and workflows/ (what `pip install llmrelease[steps,ml]` runs). Each import,
module-level or lazy, must resolve to a distribution named in pyproject.toml's `dependencies` or its `steps` or
`ml` extra, never one only the `dev` extra (the tests' tools) brings; and every pin in constraints.txt is for a
distribution that is installed at that version.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("registry", "steps", "workflows")
RUNTIME_GROUPS = ("base", "steps", "ml")
# Imported only inside the GPU eval image, which installs it itself (images/eval-gpu/requirements.txt).
ELSEWHERE = {"vllm": "images/eval-gpu"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {g: {_norm(Requirement(r).name) for r in reqs} for g, reqs in project["optional-dependencies"].items()}
    groups["base"] = {_norm(Requirement(r).name) for r in project["dependencies"]}
    return groups


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the shipped files importing it (module-level and inside functions)."""
    found: dict[str, set[str]] = {}
    for package in SHIPPED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in SHIPPED:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    # GIVEN every import of the shipped code WHEN resolved to its distribution THEN a runtime group declares it
    declared, dists = _declared(), packages_distributions()
    runtime = set().union(*(declared[g] for g in RUNTIME_GROUPS))
    undeclared = {
        module: sorted(files)
        for module, files in _imports().items()
        if module not in ELSEWHERE and not {_norm(d) for d in dists.get(module, [module])} & runtime
    }
    assert undeclared == {}, "imported but not declared in pyproject.toml's dependencies or steps/ml extras"


def test_test_only_tools_are_not_runtime_dependencies() -> None:
    # GIVEN the dev extra WHEN a distribution there is also a runtime dependency THEN only if the code imports it
    declared, dists = _declared(), packages_distributions()
    imported = {_norm(d) for module in _imports() for d in dists.get(module, [module])}
    runtime = set().union(*(declared[g] for g in RUNTIME_GROUPS))
    assert "jsonschema" in declared["dev"] and "jsonschema" not in runtime
    assert "jsonschema" not in imported
    assert {"numpy", "psutil", "shtab"} <= runtime


def test_constraints_pin_installed_versions_of_every_declared_dependency() -> None:
    # GIVEN constraints.txt WHEN each declared dependency is looked up THEN it is pinned at the installed version
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[_norm(name)] = pinned.split(";")[0].strip()
    skipped = {"torch"}  # installed from the CPU wheel index (+cpu local version), see the Makefile
    for group, names in _declared().items():
        for name in sorted(names - skipped):
            assert name in pins, f"{name} ({group}) is not pinned in constraints.txt"
            try:
                installed = version(name)
            except PackageNotFoundError:
                continue  # declared for an image, not installed here
            assert installed == pins[name], f"{name}: constraints.txt pins {pins[name]}, installed {installed}"
