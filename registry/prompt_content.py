"""What a prompt is: a template with `{{variables}}`, the variables' defaults and the generation settings.

`PromptContent` is the unit the Prompt Registry versions (`registry.prompts`) and the onboard step validates
(`steps/onboarding/prompts.py`). Its `digest` is the sha256 of its canonical JSON (template, variables, generation
settings; not the name), so the same text always maps to the same registered version. A template is either a
system prompt (one string) or a chat template (a list of `{role, content}` messages); both use MLflow's
`{{name}}` placeholders, so a version loaded from the registry formats the same way in MLflow's own tools.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry.errors import SpecError

__all__ = [
    "PLACEHOLDER_PATTERN",
    "VARIABLE_PATTERN",
    "GenerationSettings",
    "Message",
    "PromptContent",
]

# MLflow's own variable pattern (mlflow.prompt.constants.PROMPT_TEMPLATE_VARIABLE_PATTERN), so both agree.
VARIABLE_PATTERN = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\s*\}\}")
PLACEHOLDER_PATTERN = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)  # anything in double braces, variable or not
_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Message(BaseModel):
    """One message of a chat template."""

    model_config = _FROZEN

    role: Literal["system", "user", "assistant"] = Field(description="one of system, user, assistant")
    content: str = Field(min_length=1, description="the message text, with {{variables}}")


class GenerationSettings(BaseModel):
    """How the model generates with this prompt (OpenAI chat-completion meanings)."""

    model_config = _FROZEN

    temperature: float = Field(default=0.0, ge=0, le=2, description="sampling temperature in [0, 2], e.g. 0.0")
    max_tokens: int = Field(default=256, gt=0, description="tokens generated at most, a positive integer")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling mass in (0, 1], e.g. 1.0")
    stop: list[str] = Field(default_factory=list, max_length=4, description="up to 4 non-empty stop strings")

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("a stop string must not be empty")
        return stop


class PromptContent(BaseModel):
    """A prompt as versioned: name, template, declared variables (name -> default or None), generation settings."""

    model_config = _FROZEN

    name: str
    template: str | list[Message]
    variables: dict[str, str | None] = Field(default_factory=dict)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @field_validator("template")
    @classmethod
    def _normalised(cls, template: str | list[Message]) -> str | list[Message]:
        """Line endings to LF and surrounding blank space removed, so a file's final newline is no change."""
        if isinstance(template, str):
            return _tidy(template)
        return [m.model_copy(update={"content": _tidy(m.content)}) for m in template]

    @property
    def messages(self) -> list[Message]:
        """The template as chat messages: a system prompt is one system message."""
        if isinstance(self.template, str):
            return [Message(role="system", content=self.template)]
        return list(self.template)

    @property
    def text(self) -> str:
        """Every message's content, in order, one blank line apart (what length rules and phrase checks read)."""
        return "\n\n".join(m.content for m in self.messages)

    def placeholders(self) -> list[str]:
        """The inside of every `{{...}}` of the template, stripped, in order of first use, each once."""
        return list(dict.fromkeys(p.strip() for p in PLACEHOLDER_PATTERN.findall(self.text)))

    def used_variables(self) -> list[str]:
        """The variable names the template uses, in order of first use, each once."""
        return list(dict.fromkeys(VARIABLE_PATTERN.findall(self.text)))

    def canonical_json(self) -> str:
        """The canonical JSON the digest is taken of: template, variables, generation; sorted keys, no spaces."""
        template: Any = self.template if isinstance(self.template, str) else [m.model_dump() for m in self.template]
        body = {"template": template, "variables": self.variables, "generation": self.generation.model_dump()}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of `canonical_json()`: equal for equal content, whatever the prompt's name."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def render(self, values: Mapping[str, str] | None = None, *, strict: bool = True) -> list[Message]:
        """The messages with every `{{variable}}` replaced by its value in `values`, else its default.

        Args:
            values: Values by variable name; they win over the defaults.
            strict: Whether a variable with neither a value nor a default is an error; when False it renders
                as the empty string (what a length check of the fixed part of the prompt wants).

        Raises:
            SpecError: `strict` and a used variable has no value and no default; names it and the fix.
        """
        given = dict(values or {})

        def value_of(match: re.Match[str]) -> str:
            name = match.group(1)
            value = given.get(name, self.variables.get(name))
            if value is None:
                if strict:
                    raise SpecError(
                        f"prompt {self.name!r}: variable {name!r} has no value and no default: pass a value for it "
                        f"or give it a default in prompt.variables"
                    )
                return ""
            return value

        return [m.model_copy(update={"content": VARIABLE_PATTERN.sub(value_of, m.content)}) for m in self.messages]


def _tidy(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()
