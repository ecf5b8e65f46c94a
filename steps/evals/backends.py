"""Inference backends for batch evals, behind one `Engine` protocol, and `make_engine` to pick one.

| backend        | module          | runs                                   | capabilities              |
| -------------- | --------------- | -------------------------------------- | ------------------------- |
| `transformers` | backend_hf      | a local weights dir on CPU or one GPU  | generate, loglikelihood   |
| `vllm`         | backend_vllm    | a local weights dir on GPUs            | generate, loglikelihood   |
| `http`         | backend_http    | any OpenAI-compatible endpoint         | generate (+ loglikelihood |
|                |                 |                                        | with `logprobs=True`)     |

Engines are imported lazily: this module imports neither torch, transformers nor vllm.
`check_supported` refuses a suite whose tasks the engine cannot run before any request is sent.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from steps.errors import ReleaseError

if TYPE_CHECKING:
    from steps.evals.suites import Suite

__all__ = [
    "GENERATE",
    "LOGLIKELIHOOD",
    "EngineKind",
    "Engine",
    "EvalError",
    "Generation",
    "check_supported",
    "make_engine",
    "required_capability",
]

GENERATE = "generate"
LOGLIKELIHOOD = "loglikelihood"
EngineKind = Literal["auto", "transformers", "vllm", "http"]


class EvalError(ReleaseError):
    """An eval suite, backend or endpoint failed: names the suite/item/endpoint at fault and the fix."""


@dataclass(frozen=True)
class Generation:
    """One generated answer.

    Attributes:
        text: The generated text, special tokens removed.
        output_tokens: Tokens generated; None where the backend cannot tell (an HTTP server without `usage`).
        latency_ms: Wall time of the call that produced it (for batched backends, the whole batch's time).
    """

    text: str
    output_tokens: int | None
    latency_ms: float


@runtime_checkable
class Engine(Protocol):
    """What an eval needs from an inference backend."""

    @property
    def name(self) -> str:
        """The backend's name for error messages: transformers, vllm or http."""
        ...

    @property
    def capabilities(self) -> Set[str]:
        """What it can do: `GENERATE` and/or `LOGLIKELIHOOD`."""
        ...

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float) -> list[Generation]:
        """Answer each prompt (chat-formatted where the model has a chat template); results in input order."""
        ...

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context; results in input order."""
        ...


def required_capability(task: str) -> str:
    """The engine capability a task type needs: log-likelihoods for multiple_choice, generation otherwise."""
    return LOGLIKELIHOOD if task == "multiple_choice" else GENERATE


def check_supported(suite: Suite, engine: Engine) -> None:
    """Refuse a suite the engine cannot run, before anything is sent.

    Raises:
        EvalError: Names the first item whose task needs a capability the engine lacks.
    """
    for item in suite.items:
        need = required_capability(item.task)
        if need in engine.capabilities:
            continue
        if need == LOGLIKELIHOOD:
            raise EvalError(
                f"suite {suite.name} item {item.id}: task {item.task} needs log-likelihoods, which backend "
                f"{engine.name} cannot give; run it on the transformers or vllm backend or drop the item"
            )
        raise EvalError(
            f"suite {suite.name} item {item.id}: task {item.task} needs generation, which backend {engine.name} "
            "cannot give; run it on another backend or drop the item"
        )


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
        from steps.evals.backend_http import OpenAIHTTPEngine

        return OpenAIHTTPEngine(**kw)
    if kind == "transformers":
        from steps.evals.backend_hf import TransformersEngine

        return TransformersEngine(**kw)
    if kind == "vllm":
        from steps.evals.backend_vllm import VLLMEngine

        return VLLMEngine(**kw)
    raise EvalError(f"engine kind {kind!r} is unknown: use auto, transformers, vllm or http")


def _vllm_usable() -> bool:
    """True when vllm is importable and torch sees a CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())
