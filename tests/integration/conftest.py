"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """examples/models, built by the repo's script when missing (what `make demo-models` does)."""
    models = REPO / "examples" / "models"
    if not all((models / name / "model.safetensors").is_file() for name in ("candidate", "candidate-llama")):
        proc = subprocess.run(
            [sys.executable, str(REPO / "examples" / "build_demo_models.py"), "--out", str(models)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return models
