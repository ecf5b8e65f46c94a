"""A tiny random GPT-2 with a BPE tokenizer trained locally: real transformers models for tests, no hub."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from examples.chat_formats import LLAMA3_BOS, LLAMA3_CHAT_TEMPLATE, LLAMA3_EOS, LLAMA3_EOT, LLAMA3_SPECIAL_TOKENS


def build_tiny_gpt2(
    directory: Path, corpus: Iterable[str], *, seed: int = 0, n_positions: int = 64, chat_template: str | None = None
) -> Path:
    """Train a byte-level BPE tokenizer on `corpus`; save it with a 1-layer, 32-wide random GPT-2 in `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|user|>", "<|bot|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(list(corpus), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    if chat_template:
        tokenizer.chat_template = chat_template
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def register_local_version(client: Any, name: str, model_dir: Path, experiment: str = "test-onboarding") -> str:
    """Register `model_dir` (registered in place) as a new version of `name`, with the onboarding run and manifest
    the register step logs, so consumers can verify the weights; returns the version's digest."""
    import hashlib

    from registry.integrity import MANIFEST_ARTIFACT, ManifestFile, manifest_digest
    from registry.tags import DIGEST_TAG

    files = [
        ManifestFile(
            path=p.relative_to(model_dir).as_posix(),
            sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
            size=p.stat().st_size,
        )
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    ]
    digest = manifest_digest(files)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id)
    client.log_dict(run.info.run_id, {"digest": digest, "files": [f.model_dump() for f in files]}, MANIFEST_ARTIFACT)
    client.set_terminated(run.info.run_id)
    client.create_model_version(name, str(model_dir), run_id=run.info.run_id, tags={DIGEST_TAG: digest})
    return digest


def build_tiny_llama(
    directory: Path,
    corpus: Iterable[str],
    *,
    seed: int = 0,
    n_positions: int = 128,
    layers: int = 2,
    width: int = 64,
    vocab_size: int = 512,
    chat_template: str = LLAMA3_CHAT_TEMPLATE,
) -> Path:
    """A random Llama (LlamaForCausalLM: RMSNorm, rotary positions, SwiGLU, grouped-query attention) with a
    byte-level BPE tokenizer trained on `corpus`, Llama 3's special tokens and chat template; saved in `directory`.

    The tokenizer is a real one of the Llama 3 kind (BOS <|begin_of_text|>, EOS <|eot_id|>, which ends each chat
    turn), so prompts go through the chat template exactly as a served instruct model's would.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LLAMA3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(list(corpus), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=LLAMA3_BOS, eos_token=LLAMA3_EOT, pad_token=LLAMA3_EOS
    )
    tokenizer.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=n_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
