"""The vLLM backend: offline batched inference on GPUs through vLLM's documented `LLM` API.

Written against vLLM's offline API: `LLM(model=..., dtype=..., gpu_memory_utilization=...,
tensor_parallel_size=..., trust_remote_code=False)`, `llm.generate(prompts, SamplingParams(temperature=...,
max_tokens=...))` returning `RequestOutput`s in input order, `llm.get_tokenizer()`, and
`SamplingParams(prompt_logprobs=...)` whose `RequestOutput.prompt_logprobs` holds, per prompt token, a dict from
token id to `Logprob(logprob=...)` (None for the first token). Prompts for log-likelihoods go in as token ids
(`{"prompt_token_ids": [...]}`, a `TokensPrompt`) so the context/continuation split is exactly the one
`encode_pair` made, as in the transformers backend.

vllm is imported when the engine is built; not installed -> `EvalError`. Not exercised on CPU-only machines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from steps.evals.engines.base import (
    GENERATE,
    LOGLIKELIHOOD,
    EvalError,
    Generation,
    PromptMessages,
    chat_messages,
    prefixed_context,
)
from steps.evals.engines.transformers_engine import encode_pair

__all__ = ["VLLMEngine"]


class VLLMEngine:
    """An `Engine` on vLLM's offline `LLM` class, from a local weights directory.

    Args:
        model_dir: A local directory written by `save_pretrained` (hub ids are refused).
        dtype: vLLM's dtype ("auto", "bfloat16", "float16").
        gpu_memory_utilization: Fraction of GPU memory vLLM may take.
        tensor_parallel_size: GPUs to shard the model across.
        max_model_len: Context length cap; None uses the model's.
        seed: vLLM's seed, for reproducible sampling.
        messages: A release prompt's rendered messages, before every item (as in the transformers engine).
    """

    name = "vllm"
    capabilities = frozenset({GENERATE, LOGLIKELIHOOD})

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        seed: int = 0,
        messages: PromptMessages = (),
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise EvalError(
                "backend vllm: vllm is not installed here: run on the GPU eval image, or use backend transformers"
            ) from e
        if not (Path(model_dir) / "config.json").is_file():
            raise EvalError(f"model dir {model_dir}: no config.json there: point model_dir at a local directory")
        self._sampling_params = SamplingParams
        self.llm: Any = LLM(
            model=str(model_dir),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            seed=seed,
            trust_remote_code=False,
        )
        self.tokenizer: Any = self.llm.get_tokenizer()
        self.messages = tuple(messages)

    def format_prompt(self, prompt: str) -> str:
        """The prompt through the tokenizer's chat template when it has one, else raw; a release prompt first."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = chat_messages(self.messages, prompt)
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return prefixed_context(self.messages, prompt)

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float) -> list[Generation]:
        """Answer each prompt in one vLLM batch; latency is the batch's wall time; results in input order."""
        params = self._sampling_params(temperature=temperature, max_tokens=max_new_tokens)
        began = time.perf_counter()
        outputs = self.llm.generate([self.format_prompt(p) for p in prompts], params, use_tqdm=False)
        latency_ms = (time.perf_counter() - began) * 1000
        return [
            Generation(text=o.outputs[0].text, output_tokens=len(o.outputs[0].token_ids), latency_ms=latency_ms)
            for o in outputs
        ]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of the continuation tokens' prompt log-probs (one generated token, discarded); in input order."""
        encoded = [encode_pair(self.tokenizer, prefixed_context(self.messages, ctx), cont) for ctx, cont in pairs]
        params = self._sampling_params(temperature=0.0, max_tokens=1, prompt_logprobs=1)
        prompts = [{"prompt_token_ids": ctx + cont} for ctx, cont in encoded]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for (ctx, cont), output in zip(encoded, outputs, strict=True):
            ids = ctx + cont
            logprobs = output.prompt_logprobs
            results.append(float(sum(logprobs[j][ids[j]].logprob for j in range(len(ctx), len(ids)))))
        return results
