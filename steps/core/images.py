"""The container images the rendered templates reference, pinned in one place.

Change a tag here, run `llmrelease render`, and every template follows. Production overrides pin by digest.
"""

from __future__ import annotations

__all__ = ["STEPS_IMAGE", "EVAL_GPU_IMAGE"]

STEPS_IMAGE = "ghcr.io/llmrelease/steps:0.1.0"
EVAL_GPU_IMAGE = "ghcr.io/llmrelease/eval-gpu:0.1.0"
