"""The `Engine` protocol every eval backend implements (`steps.evals.engines.factory.make_engine` picks one).

| backend        | module              | runs                                   | capabilities              |
| -------------- | ------------------- | -------------------------------------- | ------------------------- |
| `transformers` | transformers_engine | a local weights dir on CPU or one GPU  | generate, loglikelihood   |
| `vllm`         | vllm_engine         | a local weights dir on GPUs            | generate, loglikelihood   |
| `http`         | http_engine         | any OpenAI-compatible endpoint         | generate (+ loglikelihood |
|                |                     |                                        | with `logprobs=True`)     |

Engines are imported lazily: this module imports neither torch, transformers nor vllm.
`steps.evals.suites.check_supported` refuses a suite whose tasks the engine cannot run before any request is sent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from registry.errors import ReleaseError

__all__ = [
    "GENERATE",
    "LOGLIKELIHOOD",
    "PromptMessages",
    "EngineKind",
    "Engine",
    "EvalError",
    "Generation",
    "chat_messages",
    "env_seconds",
    "prefixed_context",
    "required_capability",
]

GENERATE = "generate"
LOGLIKELIHOOD = "loglikelihood"
EngineKind = Literal["auto", "transformers", "vllm", "http"]
PromptMessages = tuple[tuple[str, str], ...]
"""A release prompt's rendered messages, (role, content) in order, put before every item (empty: none)."""


class EvalError(ReleaseError):
    """An eval suite, backend or endpoint failed: names the suite/item/endpoint at fault and the fix."""


def env_seconds(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """The environment variable `name` as seconds > 0, else `default` when unset or empty.

    Raises:
        EvalError: It is set but not a finite number of seconds > 0 (one line naming it and an example).
    """
    raw = (os.environ if environ is None else environ).get(name) or ""
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise EvalError(f"{name}={raw!r}: expected seconds > 0, e.g. {default:g}")
    return value


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


def chat_messages(prefix: PromptMessages, prompt: str) -> list[dict[str, str]]:
    """The chat an engine sends for one item: the release prompt's messages, then the item as the user's."""
    return [{"role": role, "content": content} for role, content in prefix] + [{"role": "user", "content": prompt}]


def prefixed_context(prefix: PromptMessages, context: str) -> str:
    """A raw (untemplated) text with the release prompt's messages before it, one blank line apart.

    What a model without a chat template sees, and the context of a log-likelihood item under a prompt.
    """
    if not prefix:
        return context
    return "\n\n".join(content for _, content in prefix) + "\n\n" + context
