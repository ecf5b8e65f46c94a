"""Prompt validation at onboarding: every check a release's prompt must pass before anything is registered.

`validate_prompt` reads the template (inline, or a file inside the spec's repository), then checks, cheapest
first: every `{{placeholder}}` is a variable name; the declared variables match the template (none undeclared,
none unused); the environment's `prompt_rules` of the platform policy (`max_chars`, `forbidden_phrases`, case
and spacing ignored, on the template and on its rendering with the defaults); and the rendered length in the
model's own tokens (its tokenizer and chat template, from the weights folder) plus `generation.max_tokens`
against the model's context length. Each refusal is one line naming the prompt, the variable, phrase or number at
fault and the fix: `SpecError` for the prompt itself, `PolicyError` for a policy rule (as for licences), and
`OnboardingError` when the weights folder has no usable tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from registry.errors import OnboardingError, PolicyError, SpecError
from registry.prompt_content import VARIABLE_PATTERN, Message, PromptContent
from steps.onboarding.weights import read_config, summarize_config
from steps.release.policy import PlatformPolicy
from steps.release.prompt import PromptSpec

__all__ = [
    "ValidatedPrompt",
    "check_prompt_rules",
    "check_token_budget",
    "check_variables",
    "context_length",
    "count_tokens",
    "load_tokenizer",
    "read_prompt",
    "validate_prompt",
]

_MESSAGE_SUFFIXES = (".yaml", ".yml", ".json")


class ValidatedPrompt(BaseModel):
    """A prompt that passed every check: what to register, and the numbers the checks found."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    content: PromptContent
    digest: str
    tokens: int
    context_length: int


def validate_prompt(
    spec: PromptSpec,
    *,
    repo_root: Path,
    weights_dir: Path,
    policy: PlatformPolicy,
    environment: str,
    max_context: int | None = None,
) -> ValidatedPrompt:
    """Read and check a release's prompt; nothing is registered here.

    Args:
        spec: The spec's `prompt` block.
        repo_root: The spec's repository checkout (`template_file` is read inside it).
        weights_dir: The weights the prompt will be served with (the new ones, or the champion's): its tokenizer
            and config.json.
        policy: The platform policy.
        environment: The environment whose `prompt_rules` apply.
        max_context: The spec's `model.serving.max_context`, when set (the smaller context wins).

    Returns:
        The content to register, its digest, its rendered length in tokens and the context it must fit.

    Raises:
        SpecError: The template file, a placeholder, a variable or the length is wrong.
        PolicyError: A `prompt_rules` rule of `environment` refuses the prompt.
        OnboardingError: The weights folder has no loadable tokenizer or no context length.
    """
    content = read_prompt(spec, repo_root)
    check_variables(content)
    check_prompt_rules(content, policy, environment)
    context = context_length(weights_dir, max_context)
    tokens = check_token_budget(content, load_tokenizer(weights_dir), context, model=str(weights_dir))
    return ValidatedPrompt(content=content, digest=content.digest, tokens=tokens, context_length=context)


def read_prompt(spec: PromptSpec, repo_root: Path) -> PromptContent:
    """The prompt's content, reading `template_file` (text; YAML or JSON: a list of messages) inside `repo_root`.

    Raises:
        SpecError: The file is outside the repository, missing, unreadable or not a list of messages.
    """
    if spec.template_file is None:
        return spec.content()
    root = repo_root.resolve()
    path = (root / spec.template_file).resolve()
    where = f"prompt {spec.name!r}: template_file {spec.template_file}"
    if not path.is_relative_to(root):
        raise SpecError(f"{where} leads outside the repository {root} (a symbolic link?): commit the file itself")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SpecError(f"{where} not found in {root}: commit the file or fix the path") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where} is unreadable ({e}): save it as UTF-8 text") from e
    if path.suffix.lower() not in _MESSAGE_SUFFIXES:
        return spec.content(text)
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        messages: Any = [Message.model_validate(m) for m in raw] if isinstance(raw, list) else None
    except (ValueError, yaml.YAMLError, TypeError) as e:
        raise SpecError(f"{where} is not a list of {{role, content}} messages ({_first_line(e)}): fix the file") from e
    if not messages:
        raise SpecError(f"{where} holds no messages: write a list of {{role, content}} messages")
    return spec.content(messages)


def check_variables(content: PromptContent) -> None:
    """Every placeholder is a variable, every used variable is declared, every declared one is used.

    Raises:
        SpecError: The first placeholder or variable at fault, and what to change.
    """
    where = f"prompt {content.name!r}"
    for inside in content.placeholders():
        if VARIABLE_PATTERN.fullmatch("{{" + inside + "}}") is None:
            raise SpecError(
                f"{where}: template placeholder {{{{{inside}}}}} is not a variable name (letters, digits, '_', '.'): "
                "fix it, or remove the double braces"
            )
    used = content.used_variables()
    for name in used:
        if name not in content.variables:
            raise SpecError(
                f"{where}: the template uses {{{{{name}}}}}, which prompt.variables does not declare: "
                f"add {name} to prompt.variables (with a default, or null) or remove it from the template"
            )
    for name in content.variables:
        if name not in used:
            raise SpecError(
                f"{where}: variable {name!r} is declared in prompt.variables but the template never uses "
                f"{{{{{name}}}}}: remove it from prompt.variables or use it in the template"
            )


def check_prompt_rules(content: PromptContent, policy: PlatformPolicy, environment: str) -> None:
    """The environment's `prompt_rules`: the template's length in characters, and its forbidden phrases.

    Phrases are compared case-insensitively with runs of blank space as one space, in the template and in its
    rendering with the declared defaults (so a default cannot smuggle one in).

    Raises:
        PolicyError: A rule refuses the prompt; names the rule, the phrase or the numbers.
        SpecError: The environment is not in the policy.
    """
    rules = policy.environment(environment).prompt_rules
    where = f"prompt {content.name!r}"
    length = len(content.text)
    if rules.max_chars is not None and length > rules.max_chars:
        raise PolicyError(
            f"{policy.rule(environment, 'prompt_rules.max_chars')} allows {rules.max_chars} characters, but {where} "
            f"has {length}: shorten the template or ask the platform team"
        )
    rendered = "\n\n".join(m.content for m in content.render(strict=False))
    haystacks = [_normalised(content.text), _normalised(rendered)]
    for phrase in rules.forbidden_phrases:
        if any(_normalised(phrase) in text for text in haystacks):
            raise PolicyError(
                f"{policy.rule(environment, 'prompt_rules.forbidden_phrases')} forbids {phrase!r}, which {where} "
                "contains (in its template or a variable's default): rewrite the prompt without it"
            )


_GENERIC_TOKENIZERS = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})


def load_tokenizer(weights_dir: Path) -> Any:
    """The model's tokenizer from its weights folder (local files only, never model code).

    A folder whose tokenizer_config.json names the generic fast tokenizer (tokenizer.json and a chat template, as
    the demo models and many exported models have) loads it through its class directly, which is what AutoTokenizer
    resolves it to: ~1 s instead of ~4 s, because AutoTokenizer's lookup imports every model family's mapping
    (and torch). Any other class goes through AutoTokenizer.

    Raises:
        OnboardingError: The folder has no tokenizer transformers can load.
    """
    try:
        if _tokenizer_class(weights_dir) in _GENERIC_TOKENIZERS and (weights_dir / "tokenizer.json").is_file():
            from transformers.tokenization_utils_tokenizers import TokenizersBackend

            return TokenizersBackend.from_pretrained(weights_dir, local_files_only=True)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(weights_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise OnboardingError(
            f"weights {weights_dir}: no loadable tokenizer ({_first_line(e)}), so a prompt's length in tokens cannot "
            "be checked: save the tokenizer with the weights (tokenizer.save_pretrained)"
        ) from e


def _tokenizer_class(weights_dir: Path) -> str | None:
    """tokenizer_config.json's `tokenizer_class` (None when the file is missing or unreadable)."""
    try:
        found = json.loads((weights_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    return str(found) if found else None


def context_length(weights_dir: Path, max_context: int | None = None) -> int:
    """The tokens a sequence may hold: config.json's context length, or `max_context` when set and smaller.

    Raises:
        OnboardingError: config.json is missing or states no context length and `max_context` is unset.
    """
    found = summarize_config(read_config(weights_dir), 0).context_length
    lengths = [n for n in (found, max_context) if n is not None]
    if not lengths:
        raise OnboardingError(
            f"weights {weights_dir}: config.json states no context length (max_position_embeddings, n_positions, "
            "...): set model.serving.max_context"
        )
    return min(lengths)


def count_tokens(tokenizer: Any, messages: list[Message]) -> int:
    """The tokens `messages` take as the model sees them.

    Through its chat template (with the generation prompt) when the tokenizer has one, else their contents one per
    line.

    Raises:
        SpecError: The chat template refuses the messages (e.g. a model without a system role).
    """
    dicts = [m.model_dump() for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = str(tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True))
        except Exception as e:  # jinja2's TemplateError (raise_exception in the template) and kin
            raise SpecError(
                f"the model's chat template refuses the prompt's messages ({_first_line(e)}): use the roles the "
                "model's template accepts (e.g. no system message)"
            ) from e
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return len(tokenizer("\n".join(m.content for m in messages))["input_ids"])


def check_token_budget(content: PromptContent, tokenizer: Any, context: int, *, model: str) -> int:
    """The rendered prompt (variables without a default left empty) plus `generation.max_tokens` fits `context`.

    Args:
        content: The prompt.
        tokenizer: The model's tokenizer (`load_tokenizer`).
        context: The model's context length in tokens (`context_length`).
        model: What to call the model in the message (its weights folder or name).

    Returns:
        The rendered prompt's length in tokens.

    Raises:
        SpecError: It does not fit; names both numbers and what to lower.
    """
    try:
        tokens = count_tokens(tokenizer, content.render(strict=False))
    except SpecError as e:
        raise SpecError(f"prompt {content.name!r}: {e}") from e
    budget = tokens + content.generation.max_tokens
    if budget > context:
        raise SpecError(
            f"prompt {content.name!r} renders to {tokens} tokens of {model}'s tokenizer; with "
            f"generation.max_tokens {content.generation.max_tokens} that is {budget}, over its context length "
            f"{context}: shorten the template or lower prompt.generation.max_tokens"
        )
    return tokens


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def _first_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return f"{error.error_count()} errors, first: {error.errors(include_url=False)[0]['msg']}"
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
