r"""A prompted served version: the same weights, served with a prompt applied by the model's own chat template.

A release that changes only the prompt serves the champion's weights under a new *served version* (`3.p2`: model
version 3 with version 2 of its prompt; `steps.rollout.serving.base.served_version`). The local plane serves it
from an *overlay folder*: a symbolic link to every verified weight file, plus

* a chat template (`chat_template.jinja`, and the same text as `chat_template` in `tokenizer_config.json`) that
  first puts the prompt's rendered messages before the request's, as the evals do
  (`steps.evals.prompt_pairs.AppliedPrompt.messages`: variables with their defaults), then runs the model's
  original template unchanged: `{%- set messages = [...] + messages %}`. The prompt's text is emitted as Jinja
  string literals in which every character that could mean anything to Jinja (quotes, backslashes, braces, `%`,
  `#`, newlines, anything not ASCII) is a `\uXXXX` escape, which Jinja's string literals decode: a prompt
  containing `{{ x }}` or `{% raw %}` is served literally;
* a `generation_config.json`: the model's, with the prompt's temperature (0: greedy), top_p, max_new_tokens and
  stop strings merged in; a request's own values still win.

`transformers serve` (the local plane's server) loads the processor and the model from that folder, so both apply
to every chat completion. It raises a default `max_new_tokens` below 1024 to 1024 (its `_build_generation_config`),
so there the prompt's `max_tokens` is not a default cap; vLLM's `--generation-config` keeps it. On the cluster the
same files are written into the downloaded weights folder by the pod's `fetch-weights` initContainer
(`apply_in_place`, from the Rollout's SERVED_PROMPT), and vLLM reads both from there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from steps.rollout.serving.base import ServedPrompt, ServingError

__all__ = [
    "OVERRIDDEN",
    "apply_in_place",
    "chat_template",
    "generation_config",
    "jinja_literal",
    "overlay_folder",
    "prompt_files",
    "prompt_prefix",
]

OVERRIDDEN = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json", "generation_config.json")
_JINJA_SPECIAL = set("\"'\\{}%#")


def jinja_literal(text: str) -> str:
    r"""A double-quoted Jinja string literal that evaluates to `text`, with no character Jinja could read as syntax.

    Printable ASCII other than quotes, backslash, braces, `%` and `#` stays as it is; everything else becomes
    `\uXXXX` (`\UXXXXXXXX` beyond the basic plane), which Jinja decodes in string literals.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if 0x20 <= code < 0x7F and ch not in _JINJA_SPECIAL:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def prompt_prefix(prompt: ServedPrompt) -> str:
    """The template line that puts the prompt's messages before the request's."""
    items = ", ".join(
        "{" + f'"role": {jinja_literal(role)}, "content": {jinja_literal(content)}' + "}"
        for role, content in prompt.messages
    )
    return "{%- set messages = [" + items + "] + messages %}"


def chat_template(original: str, prompt: ServedPrompt) -> str:
    """The model's chat template `original` with the prompt's messages put first."""
    return prompt_prefix(prompt) + "\n" + original


def generation_config(original: dict[str, Any], prompt: ServedPrompt) -> dict[str, Any]:
    """The model's generation config with the prompt's settings merged in (temperature 0: greedy)."""
    g = prompt.generation
    merged = {k: v for k, v in original.items() if k not in ("temperature", "top_p", "do_sample", "stop_strings")}
    merged["max_new_tokens"] = g.max_tokens
    if g.temperature > 0:
        merged.update(do_sample=True, temperature=g.temperature, top_p=g.top_p)
    else:
        merged["do_sample"] = False
    if g.stop:
        merged["stop_strings"] = list(g.stop)
    return merged


def _original_template(weights: Path) -> str:
    """The weights' chat template: `chat_template.jinja` wins over `tokenizer_config.json`, as in transformers."""
    jinja = weights / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = _read_json(weights / "tokenizer_config.json")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template.strip():
        raise ServingError(
            f"weights at {weights} have no chat template (chat_template.jinja or tokenizer_config.json): a prompt "
            "needs one to be applied; give the model a chat template, or release it without a prompt"
        )
    return template


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ServingError(f"{path} is not JSON ({e}): re-onboard the weights") from e
    return loaded if isinstance(loaded, dict) else {}


def prompt_files(weights: Path, prompt: ServedPrompt) -> dict[str, str]:
    """The files that apply `prompt` to `weights`: chat template, tokenizer config, generation config, prompt.json.

    Raises:
        ServingError: The weights have no chat template, or a config file is not JSON.
    """
    template = chat_template(_original_template(weights), prompt)
    tokenizer = {**_read_json(weights / "tokenizer_config.json"), "chat_template": template}
    generation = generation_config(_read_json(weights / "generation_config.json"), prompt)
    return {
        "chat_template.jinja": template,
        "tokenizer_config.json": json.dumps(tokenizer, indent=2),
        "generation_config.json": json.dumps(generation, indent=2),
        "prompt.json": prompt.model_dump_json(indent=2),
    }


def overlay_folder(weights: Path, prompt: ServedPrompt, folder: Path) -> Path:
    """Write `folder`: links to the files of `weights` and the prompt's template and generation config.

    Args:
        weights: the verified weights folder (never written).
        prompt: the prompt version to apply.
        folder: where to write the overlay (replaced when it exists).

    Returns:
        `folder`.

    Raises:
        ServingError: The weights have no chat template, or a config file is not JSON.
    """
    weights = weights.resolve()
    files = prompt_files(weights, prompt)
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for entry in weights.iterdir():
        if entry.name not in OVERRIDDEN:
            (folder / entry.name).symlink_to(entry)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def apply_in_place(folder: str | Path, served_prompt: str) -> list[str]:
    """Apply a prompt (a `ServedPrompt` as JSON) to a downloaded weights folder; return the files written.

    What the cluster's `fetch-weights` initContainer runs after copying a prompted version's weights
    (infrastructure/serving/vllm.yaml, env SERVED_PROMPT): vLLM then serves the folder with the prompt's chat
    template and generation defaults, the same files the local plane's overlay folder holds.

    Raises:
        ServingError: `served_prompt` is not a served prompt, or the weights have no chat template.
    """
    try:
        prompt = ServedPrompt.model_validate_json(served_prompt)
    except ValueError as e:
        first = " ".join(str(e).split())[:300]
        raise ServingError(f"SERVED_PROMPT is not a served prompt ({first}): re-deploy the version") from None
    folder = Path(folder)
    files = prompt_files(folder, prompt)  # read the originals before writing over them
    (folder / "chat_template.json").unlink(missing_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return sorted(files)
