"""The overlay folder a prompted served version is served from: the prompt first, through the model's own template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.chat_formats import LLAMA3_CHAT_TEMPLATE
from registry.prompt_content import GenerationSettings, Message, PromptContent
from steps.rollout.serving.base import ServedPrompt, ServingError, model_version_of, served_version, server_name
from steps.rollout.serving.prompted import generation_config, jinja_literal, overlay_folder

SIMPLE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
NASTY = (
    "Say \"{{ 1 + 1 }}\" and {% raw %}x{% endraw %} {# no #} \\n 'q' 100% \u00e9 \U0001f600\nline two {%- set a = 1 %}"
)
REQUEST = [{"role": "user", "content": "What is the capital of France?"}]


def _weights(folder: Path, *, template: str = SIMPLE, as_jinja_file: bool = False) -> Path:
    """A real tokenizer folder (word-level, no training) with a chat template and a generation config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if as_jinja_file:
        config.pop("chat_template", None)
        (folder / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "max_new_tokens": 32}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _prompt(template: str | list[Message], **generation: object) -> ServedPrompt:
    content = PromptContent(name="assistant", template=template, generation=GenerationSettings(**generation))
    return ServedPrompt.of("assistant", "2", content)


def _rendered(folder: Path, messages: list[dict[str, str]]) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


@pytest.mark.parametrize("as_jinja_file", [False, True], ids=["tokenizer_config", "chat_template.jinja"])
def test_overlay_prepends_the_prompt_like_a_request_that_carried_it(tmp_path: Path, as_jinja_file: bool) -> None:
    # GIVEN weights with a chat template (in either place transformers reads it from) and a system prompt
    weights = _weights(tmp_path / "weights", as_jinja_file=as_jinja_file)
    prompt = _prompt("You answer in one word.")
    # WHEN the overlay is written and its tokenizer renders a request without a system message
    overlay = overlay_folder(weights, prompt, tmp_path / "overlay")
    served = _rendered(overlay, REQUEST)
    # THEN it is exactly what the original template renders for the prompt's messages followed by the request's
    direct = _rendered(weights, [{"role": "system", "content": "You answer in one word."}, *REQUEST])
    assert served == direct and served.startswith("<system>You answer in one word.</system>")
    # AND the weights are links to the verified files, never copies; the weights folder is unchanged
    assert (overlay / "model.safetensors").is_symlink()
    assert (overlay / "model.safetensors").resolve() == (weights / "model.safetensors").resolve()
    assert "You answer" not in (weights / "tokenizer_config.json").read_text()


def test_prompt_text_with_jinja_syntax_quotes_and_unicode_is_served_literally(tmp_path: Path) -> None:
    # GIVEN a prompt whose text looks like Jinja, has quotes, backslashes, % and characters beyond the BMP
    weights = _weights(tmp_path / "weights")
    prompt = _prompt([Message(role="system", content=NASTY), Message(role="assistant", content="Understood.")])
    # WHEN it is served through the overlay's template
    served = _rendered(overlay_folder(weights, prompt, tmp_path / "overlay"), REQUEST)
    # THEN every character arrives as written, in order, before the request (a `{{name}}` is the prompt's own
    # variable, rendered before serving as in the evals: its value is served literally too, see below)
    assert served.startswith(f"<system>{NASTY}</system>\n<assistant>Understood.</assistant>\n<user>What is")
    assert served == _rendered(weights, [{"role": m, "content": c} for m, c in prompt.messages] + REQUEST)


def test_a_variable_whose_value_looks_like_jinja_is_served_literally(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "weights")
    content = PromptContent(name="assistant", template="Echo {{ x }} now.", variables={"x": "{{ x }} {% raw %}"})
    served = _rendered(overlay_folder(weights, ServedPrompt.of("assistant", "1", content), tmp_path / "o"), REQUEST)
    assert served.startswith("<system>Echo {{ x }} {% raw %} now.</system>\n<user>")


def test_a_template_that_reads_the_first_system_message_sees_the_prompt(tmp_path: Path) -> None:
    # GIVEN the Llama 3 template (it treats messages[0] specially when it is a system message)
    weights = _weights(tmp_path / "weights", template=LLAMA3_CHAT_TEMPLATE)
    prompt = _prompt("Be brief about {{topic}}.")
    # WHEN served through the overlay
    served = _rendered(overlay_folder(weights, prompt, tmp_path / "overlay"), REQUEST)
    # THEN the same as the request carrying the prompt (unfilled variables render empty, as in the evals)
    assert served == _rendered(weights, [{"role": "system", "content": "Be brief about ."}, *REQUEST])


def test_jinja_literal_has_no_jinja_syntax_and_decodes_back() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    literal = jinja_literal(NASTY)
    assert not any(ch in literal[1:-1] for ch in "{}%#\"'\n") and literal.isascii()
    assert ImmutableSandboxedEnvironment().from_string("{{ " + literal + " }}").render() == NASTY


def test_generation_config_merges_the_prompt_settings() -> None:
    original = {"eos_token_id": 1, "max_new_tokens": 32, "do_sample": True, "temperature": 0.7}
    greedy = generation_config(original, _prompt("x", temperature=0.0, max_tokens=8, stop=["###"]))
    assert greedy == {"eos_token_id": 1, "max_new_tokens": 8, "do_sample": False, "stop_strings": ["###"]}
    sampled = generation_config(original, _prompt("x", temperature=0.5, top_p=0.9, max_tokens=64))
    assert sampled == {"eos_token_id": 1, "max_new_tokens": 64, "do_sample": True, "temperature": 0.5, "top_p": 0.9}


def test_overlay_is_rewritten_and_refused_without_a_chat_template(tmp_path: Path) -> None:
    weights = _weights(tmp_path / "weights")
    overlay = overlay_folder(weights, _prompt("one"), tmp_path / "overlay")
    overlay_folder(weights, _prompt("two"), overlay)
    assert "two" in (overlay / "chat_template.jinja").read_text()
    assert "one" not in (overlay / "chat_template.jinja").read_text()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(ServingError, match="no chat template"):
        overlay_folder(bare, _prompt("x"), tmp_path / "o2")


def test_served_versions_name_model_and_prompt() -> None:
    assert served_version("3") == "3" and served_version("3", "2") == "3.p2" and served_version("3", None) == "3"
    assert model_version_of("3.p2") == "3" and model_version_of("12") == "12"
    assert server_name("3.p2") == "v3.p2"


def test_the_cluster_pod_applies_the_same_prompt_files_to_its_downloaded_weights(tmp_path: Path) -> None:
    """GIVEN weights as the cluster's fetch-weights initContainer downloads them and a prompted version's
    SERVED_PROMPT (the ServedPrompt as JSON, from the Rollout's pod template)
    WHEN `apply_in_place` runs on the folder (what the initContainer runs)
    THEN the folder holds exactly the overlay's template, generation config and prompt.json (vLLM reads them from
    there), a request without the prompt renders as one carrying it; a SERVED_PROMPT that is not a served prompt is
    one line naming the variable."""
    from steps.rollout.serving.prompted import apply_in_place

    prompt = _prompt(NASTY, temperature=0.0, max_tokens=24)
    overlay = overlay_folder(_weights(tmp_path / "local"), prompt, tmp_path / "overlay")
    pod = _weights(tmp_path / "pod")
    written = apply_in_place(str(pod), prompt.model_dump_json())
    assert written == ["chat_template.jinja", "generation_config.json", "prompt.json", "tokenizer_config.json"]
    for name in written:
        assert (pod / name).read_text() == (overlay / name).read_text(), name
    carried = [{"role": role, "content": content} for role, content in prompt.messages] + REQUEST
    assert _rendered(pod, REQUEST) == _rendered(_weights(tmp_path / "plain"), carried)
    with pytest.raises(ServingError, match="^SERVED_PROMPT is not a served prompt") as info:
        apply_in_place(pod, '{"name": "x"}')
    assert "\n" not in str(info.value)
