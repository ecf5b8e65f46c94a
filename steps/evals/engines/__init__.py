"""Eval engines: one per serving stack (transformers on CPU, vLLM on GPU, OpenAI-compatible HTTP)."""

__all__: list[str] = []
