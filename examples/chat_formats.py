"""Llama 3's chat format: its special tokens and chat template, shared by the demo's Llama and the tests' tiny one.

No imports: examples/build_demo_models.py (run as a script) and tests/tiny_models.py both read it, so neither
depends on the other.
"""

from __future__ import annotations

__all__ = ["LLAMA3_BOS", "LLAMA3_CHAT_TEMPLATE", "LLAMA3_EOS", "LLAMA3_EOT", "LLAMA3_SPECIAL_TOKENS"]

LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_EOS = "<|end_of_text|>"  # the end of a document (also the pad token of the demo's and the tests' Llamas)
LLAMA3_EOT = "<|eot_id|>"  # the end of a chat turn: the tokenizer's eos_token, where a reply stops
LLAMA3_SPECIAL_TOKENS = [LLAMA3_BOS, LLAMA3_EOS, "<|start_header_id|>", "<|end_header_id|>", LLAMA3_EOT]
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
"""Llama 3's chat template (system prompt and tool handling left out): header tokens, <|eot_id|> ends a turn."""
