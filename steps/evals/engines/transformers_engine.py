"""The transformers backend: a causal LM from a LOCAL weights directory, on CPU (or one GPU), batched.

Loading is local only (`local_files_only=True`, `trust_remote_code=False`): a hub id is refused, never fetched.
Generation uses the tokenizer's chat template when it has one (`add_generation_prompt=True`), else the raw
prompt; batches are left-padded; temperature 0 means greedy decoding; generation stops at the EOS token.
Log-likelihoods are scored in right-padded batches as the sum of the continuation tokens' log-probs.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.evals.engines.base import GENERATE, LOGLIKELIHOOD, EvalError, Generation

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersEngine", "encode_pair"]


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
        batch_size: Prompts (or pairs) per forward pass.
        num_threads: torch intra-op threads for this process (the caller gives each shard its share of cores);
            None leaves torch's default.
        seed: Seeds sampling (temperature > 0) at each `generate` call, so sampled runs are reproducible.
    """

    name = "transformers"
    capabilities = frozenset({GENERATE, LOGLIKELIHOOD})

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        batch_size: int = 8,
        num_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise EvalError(
                f"model dir {model_dir}: no config.json there: point model_dir at a local save_pretrained "
                "directory (hub ids are never downloaded)"
            )
        if num_threads is not None:
            torch.set_num_threads(num_threads)
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
        self.batch_size = batch_size
        self.seed = seed

    def format_prompt(self, prompt: str) -> str:
        """The prompt as the model sees it: through the chat template when the tokenizer has one, else raw."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return prompt

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
        encoded = [encode_pair(self.tokenizer, ctx, cont) for ctx, cont in pairs]
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
