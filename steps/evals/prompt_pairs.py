"""The prompts of an eval's (model, prompt) pairs: the release's for the candidate, the champion's for the champion.

A release that carries a prompt (`prompt:` in its spec) is evaluated as the pair (candidate weights, its prompt)
against (champion weights, the champion's prompt): the same suites, the same gate. The candidate's prompt is the
version the register step pointed the prompt's `candidate` alias at (checked against the spec's own text when the
template is inline); the champion's is the prompt's `champion` alias, none before the first prompt release. A
prompt applies to every item as messages before the item's (`AppliedPrompt.messages`; variables take their
defaults, one without renders empty) and with its generation settings (temperature; `max_tokens` caps the eval's
answer length), and its digest joins the result cache key (`GenerationSettings.prompt_digest`). Its stop strings
are not applied by the eval engines (the serving plane applies them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from registry.errors import ReleaseError
from registry.prompt_content import PromptContent
from registry.tags import CANDIDATE, CHAMPION
from steps.evals.cache import GenerationSettings
from steps.evals.engines.base import EvalError, PromptMessages
from steps.release.spec import ReleaseSpec

__all__ = ["AppliedPrompt", "PromptReader", "release_prompts"]


class PromptReader(Protocol):
    """The prompt registry reads the evals need (`registry.prompts.PromptRegistry` provides them)."""

    def load(self, name: str, *, alias: str | None = None, version: str | int | None = None) -> PromptContent: ...  # noqa: D102
    def version_of(self, name: str, alias: str) -> Any: ...  # noqa: D102


@dataclass(frozen=True)
class AppliedPrompt:
    """A registered prompt version as the evals apply it."""

    name: str
    version: str
    digest: str
    content: PromptContent

    @property
    def messages(self) -> PromptMessages:
        """The rendered messages (defaults for the variables; none given renders empty), as (role, content)."""
        return tuple((m.role, m.content) for m in self.content.render(strict=False))

    def settings(self, wanted: GenerationSettings) -> GenerationSettings:
        """`wanted` under this prompt: its digest, its temperature, its max_tokens when shorter."""
        g = self.content.generation
        return wanted.model_copy(
            update={
                "prompt_digest": self.digest,
                "temperature": g.temperature,
                "max_new_tokens": min(wanted.max_new_tokens, g.max_tokens),
            }
        )

    @property
    def label(self) -> str:
        """`<name> v<version> (sha256:ab12...)`, for messages."""
        return f"{self.name} v{self.version} ({self.digest[:19]}...)"


def release_prompts(
    spec: ReleaseSpec, reader: PromptReader, *, alias: str = CANDIDATE
) -> tuple[AppliedPrompt | None, AppliedPrompt | None]:
    """(the evaluated version's prompt, the champion's prompt) for `spec`; (None, None) when it has no prompt.

    Args:
        spec: The release spec.
        reader: The prompt registry.
        alias: The prompt alias of the version under test: `candidate` for a release, `champion` for a nightly.

    Raises:
        EvalError: The release's prompt is not registered, or its alias holds other text than the spec's.
    """
    if spec.prompt is None:
        return None, None
    name = spec.prompt.name
    try:
        mine = _applied(reader, name, alias)
        champion = _applied(reader, name, CHAMPION)
    except EvalError:
        raise
    except ReleaseError as e:
        raise EvalError(f"prompt {name!r}: {e}") from e
    if mine is None:
        raise EvalError(
            f"prompt {name!r} has no {alias!r} alias: run the register step for this release first (it registers "
            "the prompt and points candidate at it)"
        )
    if spec.prompt.template is not None and spec.prompt.content().digest != mine.digest:
        raise EvalError(
            f"prompt {name!r}: alias {alias} holds {mine.label}, not this release's prompt "
            f"({spec.prompt.content().digest[:19]}...): another release registered it since; re-run register"
        )
    return mine, champion


def _applied(reader: PromptReader, name: str, alias: str) -> AppliedPrompt | None:
    found = reader.version_of(name, alias)
    if found is None:
        return None
    content = reader.load(name, version=found.version)
    return AppliedPrompt(name=name, version=str(found.version), digest=content.digest, content=content)
