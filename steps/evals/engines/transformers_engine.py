"""The transformers backend: a causal LM from a LOCAL weights directory, on CPU (or one GPU), batched.

Loading is local only (`local_files_only=True`, `trust_remote_code=False`): a hub id is refused, never fetched.
Generation uses the tokenizer's chat template when it has one (`add_generation_prompt=True`), else the raw
prompt; batches are left-padded; temperature 0 means greedy decoding; generation stops at the EOS token.
Log-likelihoods are scored in right-padded batches as the sum of the continuation tokens' log-probs.

Threads are always set explicitly (`set_torch_threads`): the caller's share (an eval worker's), else every core
this process may run on; intra-op = that share, inter-op = 1. Batch size, unless given (`choose_batch_size`):
the sequences whose working memory (KV cache over the model's context, capped at 4096 positions, plus the
float32 logits a scoring pass keeps twice) fits a quarter of this process's share of the free memory (on a GPU:
half the free device memory after loading), clamped to 1..32 on CPU (larger batches pad more on mixed prompt
lengths; benchmarks/eval_throughput.py sweeps it) and 1..128 on a GPU.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.evals.engines.base import (
    GENERATE,
    LOGLIKELIHOOD,
    EvalError,
    Generation,
    PromptMessages,
    chat_messages,
    prefixed_context,
)

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersEngine", "choose_batch_size", "encode_pair", "set_torch_threads", "usable_cores"]

CPU_MAX_BATCH = 32
GPU_MAX_BATCH = 128


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to `threads` (None: `usable_cores()`), inter-op to 1; the count set.

    Inter-op threads can be set once per process, before any parallel work: a later call leaves them as they are.
    """
    import torch

    count = max(1, threads or usable_cores())
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started in this process
        pass
    return count


def preload() -> None:
    """Import what building an engine imports whatever the model is: the Auto classes, modeling and generation.

    A process's first `from_pretrained` pays them (2.8-3.1 s on 2 cores against 0.2 s for the model itself, the
    demo's models; its own modeling module ~0.1 s): an eval worker's warm-up (`ShardWorker.prepare`) pays them
    instead of the first step.
    """
    import importlib

    for name in _ENGINE_MODULES:
        importlib.import_module(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    del AutoModelForCausalLM, AutoTokenizer  # resolved, so imported: the lazy module loads them on first access


_ENGINE_MODULES = (
    "transformers.generation.utils",
    "transformers.modeling_layers",
    "transformers.modeling_utils",
    "transformers.processing_utils",
    "transformers.tokenization_utils_fast",
)
"""What any model's first `from_pretrained` imports besides the Auto classes (tests/unit/test_eval_threads.py)."""


def choose_batch_size(config: Any, device: str, threads: int, free_bytes: int | None = None) -> int:
    """Sequences per forward pass for a model `config` on `device`, by the rule in the module docs.

    Args:
        config: The model's transformers config (layers, hidden size, vocabulary, context length).
        device: "cpu" or "cuda[:n]".
        threads: This process's cores: its share of the free memory is threads / usable cores (on CPU).
        free_bytes: The free memory to share; None: read it (psutil on CPU, torch on a GPU).
    """
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 1)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 1)
    vocab = int(getattr(config, "vocab_size", 0) or 1)
    positions = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048)
    context = min(positions, 4096)
    per_sequence = context * (2 * layers * hidden * 4 + 2 * vocab * 4)
    gpu = device.startswith("cuda")
    if free_bytes is None:
        free_bytes = _free_bytes(device)
    budget = free_bytes // 2 if gpu else free_bytes * min(1.0, threads / usable_cores()) // 4
    return int(max(1, min(GPU_MAX_BATCH if gpu else CPU_MAX_BATCH, budget // per_sequence)))


def _free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split where the context's own tokens end.

    Trailing whitespace of the context moves to the continuation ("Q: x " + "A" -> "Q: x" + " A"), since
    tokenizers attach a space to the word after it. The whole string is tokenized once and split at the
    length of the context's tokens, as lm-evaluation-harness does. An empty context gets the BOS (or EOS) token.

    Raises:
        EvalError: The continuation is empty, or the context is empty and the tokenizer has no BOS/EOS token.
    """
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    whole = list(tokenizer(stripped + continuation, add_special_tokens=False)["input_ids"])
    ctx = list(tokenizer(stripped, add_special_tokens=False)["input_ids"]) if stripped else []
    cont = whole[len(ctx) :]
    if not cont:
        raise EvalError(f"continuation {continuation!r} has no tokens after context {context[-40:]!r}: fix the item")
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise EvalError("empty context and the tokenizer has no BOS or EOS token: give the item a prompt")
        ctx = [int(start)]
    return [int(i) for i in ctx], [int(i) for i in cont]


class TransformersEngine:
    """An `Engine` on a local Hugging Face causal LM.

    Args:
        model_dir: A directory written by `save_pretrained` (config.json, weights, tokenizer files).
        device: A torch device string, "cpu" or "cuda[:n]".
        batch_size: Prompts (or pairs) per forward pass; None: `choose_batch_size` (model and free memory).
        num_threads: torch intra-op threads for this process (an eval worker's share of the cores); None: every
            core this process may run on (`usable_cores`), set explicitly either way.
        seed: Seeds sampling (temperature > 0) at each `generate` call, so sampled runs are reproducible.
        messages: A release prompt's rendered messages, before every item (`base.chat_messages`); without a
            chat template, and for log-likelihood contexts, their text before the item's (`base.prefixed_context`).
    """

    name = "transformers"
    capabilities = frozenset({GENERATE, LOGLIKELIHOOD})

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        batch_size: int | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        messages: PromptMessages = (),
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise EvalError(
                f"model dir {model_dir}: no config.json there: point model_dir at a local save_pretrained "
                "directory (hub ids are never downloaded)"
            )
        self.num_threads = set_torch_threads(num_threads)
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            self.model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise EvalError(f"model dir {model_dir}: cannot load ({e}): check the weights and tokenizer files") from e
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise EvalError(f"model dir {model_dir}: the tokenizer has neither a pad nor an EOS token: add one")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = self.model
        model.to(device)
        model.eval()
        self.device = device
        self.batch_size = batch_size or choose_batch_size(model.config, device, self.num_threads)
        self.seed = seed
        self.messages = tuple(messages)

    def format_prompt(self, prompt: str) -> str:
        """The prompt as the model sees it: through the chat template when the tokenizer has one, else raw.

        A release prompt's messages come first (`messages`; without a chat template, their text).
        """
        if getattr(self.tokenizer, "chat_template", None):
            messages = chat_messages(self.messages, prompt)
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return prefixed_context(self.messages, prompt)

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float) -> list[Generation]:
        """Answer each prompt; left-padded batches; greedy at temperature 0; results in input order."""
        import torch

        torch.manual_seed(self.seed)
        results: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            began = time.perf_counter()
            texts, counts = self._generate_batch(batch, max_new_tokens, temperature)
            latency_ms = (time.perf_counter() - began) * 1000
            results.extend(Generation(t, n, latency_ms) for t, n in zip(texts, counts, strict=True))
        return results

    def _generate_batch(
        self, prompts: list[str], max_new_tokens: int, temperature: float
    ) -> tuple[list[str], list[int]]:
        import torch

        templated = bool(getattr(self.tokenizer, "chat_template", None))
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(
            [self.format_prompt(p) for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not templated,  # a chat template writes its own special tokens
        ).to(self.device)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        with torch.inference_mode():
            out = self.model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **sampling,
            )
        new = out[:, encoded["input_ids"].shape[1] :]
        texts, counts = [], []
        for row in new.tolist():
            count = _length_to_eos(row, self.tokenizer.eos_token_id)
            counts.append(count)
            texts.append(str(self.tokenizer.decode(row[:count], skip_special_tokens=True)))
        return texts, counts

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of log-probs of each continuation's tokens given its raw context (no chat template); in order."""
        encoded = [encode_pair(self.tokenizer, prefixed_context(self.messages, ctx), cont) for ctx, cont in pairs]
        results: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            results.extend(self._score_batch(encoded[start : start + self.batch_size]))
        return results

    def _score_batch(self, batch: list[tuple[list[int], list[int]]]) -> list[float]:
        import torch

        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        rows = [_fit(ctx + cont, len(cont), limit) for ctx, cont in batch]
        width = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return [_sum_continuation(logprobs[i], ids[i], len(rows[i]), len(cont)) for i, (_, cont) in enumerate(batch)]


def _fit(row: list[int], n_cont: int, limit: int | None) -> list[int]:
    """Left-truncate the context so the row fits the model's positions; refuse when the continuation cannot."""
    if limit is None or len(row) <= limit:
        return row
    if n_cont >= limit:
        raise EvalError(f"a continuation of {n_cont} tokens does not fit the model's {limit} positions: shorten it")
    return row[-limit:]


def _sum_continuation(logprobs: torch.Tensor, ids: torch.Tensor, length: int, n_cont: int) -> float:
    """Sum of log P(token_j | tokens_<j) over the last `n_cont` real tokens of one row."""
    positions = range(length - n_cont, length)
    return float(sum(logprobs[j - 1, ids[j]].item() for j in positions))


def _length_to_eos(row: list[int], eos: int | None) -> int:
    """Generated tokens up to and including the first EOS (padding after it is not output)."""
    if eos is not None and eos in row:
        return row.index(eos) + 1
    return len(row)
