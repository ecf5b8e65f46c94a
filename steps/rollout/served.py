"""Which served version plays which role: a model version, with the version of its prompt that applies.

A registered model tagged `llmrelease.prompt` (the register step tags it when a release carries a prompt) serves
each model version with a version of that prompt: the plane's servers are keyed by *served version*
(`steps.rollout.serving.base.served_version`: `3`, or `3.p2`). The champion serves the model's `champion` with the
prompt's `champion` (plain when the prompt has none yet); a release's candidate serves its model version with its
prompt's `candidate` (a release with a prompt) or the prompt's `champion` (a release of weights alone: the prompt
in production keeps applying). A prompt-only release's candidate thus runs the champion's weights under another
served version: two servers on one weights folder.

A rollback undoes the champion's last move (`rollback_plan`): a prompt promotion (same weights, the prompt's
`previous`), a model promotion (the model's `previous`, the prompt's champion), or both when one workflow moved
both (a release of new weights with a new prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from registry.tags import CANDIDATE, CHAMPION, MODEL_PROMPT_TAG, PREVIOUS
from steps.rollout.serving.base import ServedPrompt, served_version

if TYPE_CHECKING:
    from registry.facade import ModelRegistry
    from registry.history import AliasMove
    from registry.prompt_content import PromptContent

__all__ = ["PromptSource", "RollbackPlan", "Target", "champion_target", "release_target", "rollback_plan"]


class PromptSource(Protocol):
    """The prompt registry reads and moves serving needs (`registry.prompts.PromptRegistry` provides them)."""

    def get_alias(self, name: str, alias: str) -> str | None: ...  # noqa: D102
    def load(self, name: str, *, alias: str | None = None, version: str | int | None = None) -> PromptContent: ...  # noqa: D102
    def history(self, name: str) -> list[AliasMove]: ...  # noqa: D102
    def rollback(self, name: str, *, actor: str, reason: str, workflow_uid: str = "") -> list[AliasMove]: ...  # noqa: D102
    def remove_alias(  # noqa: D102
        self, name: str, alias: str, *, actor: str, reason: str, workflow_uid: str = ""
    ) -> AliasMove | None: ...


PromptsFactory = Callable[[], PromptSource]


@dataclass(frozen=True)
class Target:
    """A served version: the model version it runs and the prompt version applied (None: no prompt)."""

    model_version: str
    prompt: ServedPrompt | None = None

    @property
    def served(self) -> str:
        """`3`, or `3.p2` with version 2 of the prompt."""
        return served_version(self.model_version, self.prompt.version if self.prompt else None)


@dataclass(frozen=True)
class RollbackPlan:
    """Where a rollback goes and which aliases move back."""

    champion: Target
    target: Target
    model_back: bool  # the model's champion goes back to its `previous`
    prompt: str | None  # the prompt whose champion goes back to its `previous`, when it does


def _served_prompt(prompts: PromptSource, name: str, version: str | None) -> ServedPrompt | None:
    if version is None:
        return None
    return ServedPrompt.of(name, version, prompts.load(name, version=version))


def _model_prompt(registry: ModelRegistry, model: str) -> str | None:
    return registry.model_tags(model).get(MODEL_PROMPT_TAG) or None


def champion_target(registry: ModelRegistry, prompts: PromptsFactory, model: str) -> Target | None:
    """The champion's served version: the model's champion with its prompt's champion; None without a champion."""
    champion = registry.get_alias(model, CHAMPION)
    if champion is None:
        return None
    name = _model_prompt(registry, model)
    if name is None:
        return Target(champion)
    source = prompts()
    return Target(champion, _served_prompt(source, name, source.get_alias(name, CHAMPION)))


def release_target(
    registry: ModelRegistry, prompts: PromptsFactory, model: str, version: str, prompt: str | None
) -> Target:
    """A release's candidate: model `version` with its `prompt`'s candidate, else the model's prompt's champion."""
    name = prompt or _model_prompt(registry, model)
    if name is None:
        return Target(version)
    source = prompts()
    return Target(version, _served_prompt(source, name, source.get_alias(name, CANDIDATE if prompt else CHAMPION)))


def _last_champion_move(moves: list[AliasMove]) -> AliasMove | None:
    found = [m for m in moves if m.alias == CHAMPION and m.to_version is not None]
    return max(found, key=lambda m: m.when) if found else None


def rollback_plan(registry: ModelRegistry, prompts: PromptsFactory, model: str) -> RollbackPlan | None:
    """What `llmrelease rollback` undoes: the champion's last move; None when there is nothing to go back to.

    The prompt goes back when its champion moved last (or together with the model's, by one workflow), the
    model's when the model's moved last; each needs its `previous`, except a model's first prompt, which goes back
    to no prompt (the weights served as they were before it).
    """
    champion = registry.get_alias(model, CHAMPION)
    if champion is None:
        return None
    previous, name = registry.get_alias(model, PREVIOUS), _model_prompt(registry, model)
    source: Any = prompts() if name else None
    p_champion = source.get_alias(name, CHAMPION) if name else None
    p_previous = source.get_alias(name, PREVIOUS) if name else None
    m_last = _last_champion_move(registry.history(model))
    p_last = _last_champion_move(source.history(name)) if name else None
    together = bool(m_last and p_last and p_last.workflow_uid and p_last.workflow_uid == m_last.workflow_uid)
    prompt_last = p_last is not None and (m_last is None or p_last.when > m_last.when)
    model_back = previous is not None and (together or not prompt_last)
    # The model's first prompt (its champion moved from none) goes back to none: the weights served as before it.
    first_prompt = p_champion is not None and p_last is not None and p_last.from_version is None
    prompt_back = (p_previous is not None or first_prompt) and (together or prompt_last)
    if not (model_back or prompt_back) or (prompt_last and not prompt_back and not together):
        return None
    back = _served_prompt(source, name, p_previous if prompt_back else p_champion) if name else None  # None: none
    return RollbackPlan(
        champion=Target(champion, _served_prompt(source, name, p_champion) if name else None),
        target=Target(previous if model_back and previous else champion, back),
        model_back=model_back,
        prompt=name if prompt_back else None,
    )
