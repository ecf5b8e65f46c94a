"""The transformers backend on a real (tiny, random) GPT-2 built offline in tmp_path: no hub, no network."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from steps.evals.engines.base import EvalError
from steps.evals.engines.factory import make_engine
from steps.evals.engines.transformers_engine import TransformersEngine, encode_pair
from tests.tiny_models import build_tiny_gpt2

CORPUS = [
    "the cat sat on the mat",
    "the dog ate the bone",
    "what is two plus two ? four",
    "the capital of france is paris",
    "a quick brown fox jumps over the lazy dog",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)


def _build(directory: Path, chat_template: str | None = None) -> Path:
    """A 1-layer, 32-wide random GPT-2 with a BPE tokenizer trained on CORPUS."""
    return build_tiny_gpt2(directory, CORPUS, chat_template=chat_template)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> TransformersEngine:
    return TransformersEngine(model_dir, batch_size=3, num_threads=1)


PROMPTS = ["the cat", "what is two plus two ?", "the capital of france is", "a quick brown", "the dog ate"]


def test_batched_greedy_generation_is_ordered_deterministic_and_matches_unbatched(engine: TransformersEngine) -> None:
    """GIVEN five prompts of different lengths and batches of 3 (so left padding is exercised)
    WHEN they are generated greedily twice, and each prompt once on its own
    THEN there is one output per prompt, both runs agree, and each equals its unbatched output (padding is inert).
    """
    first = engine.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    second = engine.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    alone = [engine.generate([p], max_new_tokens=6, temperature=0.0)[0] for p in PROMPTS]

    assert len(first) == len(PROMPTS)
    assert [g.text for g in first] == [g.text for g in second]
    assert [g.text for g in first] == [g.text for g in alone]
    assert all(g.output_tokens is not None and 1 <= g.output_tokens <= 6 and g.latency_ms > 0 for g in first)


def test_sampling_is_reproducible_with_the_engine_seed(engine: TransformersEngine) -> None:
    """GIVEN temperature 1.0
    WHEN the same prompts are sampled twice
    THEN the outputs agree (the engine seeds torch at each call).
    """
    a = engine.generate(PROMPTS[:2], max_new_tokens=5, temperature=1.0)
    b = engine.generate(PROMPTS[:2], max_new_tokens=5, temperature=1.0)
    assert [g.text for g in a] == [g.text for g in b]


def test_loglikelihood_equals_a_manual_forward_pass(engine: TransformersEngine) -> None:
    """GIVEN (context, continuation) pairs of different lengths, scored in a batch of 3 (right padding)
    WHEN their log-likelihoods are computed
    THEN each is finite, negative, and equals the sum computed from one unpadded forward pass.
    """
    import torch

    pairs = [
        ("the capital of france is", " paris"),
        ("the cat sat on the", " mat"),
        ("two plus two ?", " four"),
        ("the dog ate the ", "bone"),
    ]
    scores = engine.loglikelihood(pairs)

    for (ctx, cont), score in zip(pairs, scores, strict=True):
        ctx_ids, cont_ids = encode_pair(engine.tokenizer, ctx, cont)
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.inference_mode():
            logprobs = torch.log_softmax(engine.model(input_ids=ids).logits[0], dim=-1)
        manual = sum(logprobs[len(ctx_ids) + k - 1, t].item() for k, t in enumerate(cont_ids))
        assert math.isfinite(score) and score < 0
        assert score == pytest.approx(manual, abs=1e-4)


def test_encode_pair_moves_trailing_space_to_the_continuation(engine: TransformersEngine) -> None:
    """GIVEN a context ending in a space
    WHEN it is encoded with its continuation
    THEN the split equals the one for the space-leading continuation, and the pieces decode back to the text.
    """
    a = encode_pair(engine.tokenizer, "the dog ate the ", "bone")
    b = encode_pair(engine.tokenizer, "the dog ate the", " bone")
    assert a == b
    assert engine.tokenizer.decode(a[0] + a[1]) == "the dog ate the bone"


def test_chat_template_is_applied_when_the_tokenizer_has_one(tmp_path: Path) -> None:
    """GIVEN a model whose tokenizer carries a chat template
    WHEN a prompt is formatted and generated
    THEN the template wraps it with the generation prompt, and generation still returns one output.
    """
    engine = TransformersEngine(_build(tmp_path / "chat", CHAT_TEMPLATE), num_threads=1)
    assert engine.format_prompt("the cat") == "<|user|>the cat<|bot|>"
    assert len(engine.generate(["the cat"], max_new_tokens=3, temperature=0.0)) == 1


def test_a_hub_id_or_missing_dir_is_refused_without_downloading(tmp_path: Path) -> None:
    """GIVEN a hub-style id and an empty directory
    WHEN an engine is made from them
    THEN an EvalError says to point at a local save_pretrained directory.
    """
    for bad in ["openai-community/gpt2", tmp_path]:
        with pytest.raises(EvalError, match="local save_pretrained directory"):
            make_engine("transformers", model_dir=bad)


def test_vllm_backend_says_clearly_when_vllm_is_missing(model_dir: Path) -> None:
    """GIVEN a machine without the vllm package
    WHEN a vllm engine is made
    THEN an EvalError says to install vllm or use the transformers backend.
    """
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vllm is installed here")
    with pytest.raises(EvalError, match="vllm is not installed"):
        make_engine("vllm", model_dir=model_dir)
