"""The `prompt` block of a release spec: what prompt a release carries, alone or with new weights.

```yaml
model:
  name: demo-qa
  source: champion            # a prompt-only release: the weights the champion serves
  card: {...}
prompt:
  name: demo-qa-assistant     # the Prompt Registry name (DNS-1123; not a registered model's name)
  template: |                 # a system prompt, or a list of {role, content} messages
    You answer questions about {{topic}} in one short sentence.
  # template_file: prompts/assistant.txt   (instead of template: a file in the spec's repository)
  variables: {topic: geography}            # every {{variable}} of the template, with its default (null: none)
  generation: {temperature: 0.0, max_tokens: 64, top_p: 1.0, stop: ["###"]}
```

`model.source: champion` (`CHAMPION_SOURCE`) means "the weights of the model's current champion": the release
changes only the prompt, and must then carry one. Any other source brings new weights, with or without a prompt.
Checks that need the weights or the policy (variables against the template, rendered length in the model's
tokens, the environment's prompt rules) are the onboard step's: `steps/onboarding/prompts.py`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry.errors import SpecError
from registry.names import NAME_MAX_LENGTH, NAME_PATTERN, NAME_RULE
from registry.prompt_content import GenerationSettings, Message, PromptContent

__all__ = ["CHAMPION_SOURCE", "PromptSpec"]

CHAMPION_SOURCE = "champion"
_VARIABLE_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*(\.[a-zA-Z_][a-zA-Z0-9_]*)*$"


class PromptSpec(BaseModel):
    """A prompt: its registry name, template (inline or a file), declared variables and generation settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH, description=f"the Prompt Registry name, {NAME_RULE}"
    )
    template: str | list[Message] | None = Field(
        default=None,
        description="a system prompt with {{variables}}, or a list of {role, content} messages (or template_file)",
    )
    template_file: str | None = Field(
        default=None,
        min_length=1,
        description="a file in the spec's repository: the template text, or (.yaml, .json) a list of messages",
    )
    variables: dict[str, str | None] = Field(
        default_factory=dict,
        description="every {{variable}} of the template with its default, e.g. {topic: geography} (null: no default)",
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="{temperature, max_tokens, top_p, stop}"
    )

    @field_validator("template_file")
    @classmethod
    def _inside_repository(cls, path: str | None) -> str | None:
        if path is None:
            return None
        parts = PurePosixPath(path).parts
        if path.startswith(("/", "\\")) or "\\" in path or any(p in (".", "..") for p in parts):
            raise ValueError("template_file must be a relative path inside the repository, without '.' or '..'")
        return path

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, variables: dict[str, str | None]) -> dict[str, str | None]:
        bad = [name for name in variables if re.fullmatch(_VARIABLE_NAME, name) is None]
        if bad:
            raise ValueError(f"variable names are letters, digits and '_' (not starting with a digit), got {bad[0]!r}")
        return variables

    @model_validator(mode="after")
    def _one_template(self) -> PromptSpec:
        if (self.template is None) == (self.template_file is None):
            raise ValueError("give exactly one of template (inline) and template_file (a file in the repository)")
        if isinstance(self.template, str) and not self.template.strip():
            raise ValueError("template is empty: write the prompt text, or use template_file")
        if isinstance(self.template, list) and not self.template:
            raise ValueError("template has no messages: add at least one {role, content}")
        return self

    def content(self, from_file: str | list[Message] | None = None) -> PromptContent:
        """The `PromptContent` to validate and register.

        Args:
            from_file: What `template_file` holds, read by the caller (required when the spec names a file):
                `steps.onboarding.prompts.read_prompt` reads it inside the repository.
        """
        template = self.template if self.template is not None else from_file
        if template is None:
            raise SpecError(f"prompt {self.name!r}: template_file {self.template_file} was not read: pass its text")
        return PromptContent(name=self.name, template=template, variables=self.variables, generation=self.generation)
