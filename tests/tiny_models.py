"""A tiny random GPT-2 with a BPE tokenizer trained locally: real transformers models for tests, no hub."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


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
