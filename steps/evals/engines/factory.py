"""`make_engine`: pick and build the eval engine for a model (imports engines lazily: no torch or vllm here)."""

from __future__ import annotations

import importlib.util
from typing import Any

from steps.evals.engines.base import Engine, EngineKind, EvalError

__all__ = ["make_engine"]


def make_engine(kind: EngineKind, **kw: Any) -> Engine:
    """Build an engine.

    Args:
        kind: `http` for provider models (needs `base_url` and `model`); `transformers` or `vllm` for weight
            models (needs `model_dir`); `auto` picks `http` when `base_url` is given, else `vllm` when vllm is
            importable and a CUDA GPU is visible, else `transformers`.
        **kw: Passed to the engine's constructor.

    Returns:
        The engine.

    Raises:
        EvalError: Unknown kind, or the engine failed to start.
    """
    if kind == "auto":
        kind = "http" if "base_url" in kw else ("vllm" if _vllm_usable() else "transformers")
    if kind == "http":
        from steps.evals.engines.http_engine import OpenAIHTTPEngine

        return OpenAIHTTPEngine(**kw)
    if kind == "transformers":
        from steps.evals.engines.transformers_engine import TransformersEngine

        return TransformersEngine(**kw)
    if kind == "vllm":
        from steps.evals.engines.vllm_engine import VLLMEngine

        return VLLMEngine(**kw)
    raise EvalError(f"engine kind {kind!r} is unknown: use auto, transformers, vllm or http")


def _vllm_usable() -> bool:
    """True when vllm is importable and torch sees a CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())
