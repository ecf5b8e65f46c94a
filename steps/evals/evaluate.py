"""Evaluating suite items with one engine: generation and multiple-choice items, each scored (the unsharded path).

`steps.evals.sharding` runs this inside each Ray worker, one shard at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from steps.evals.cache import GenerationSettings
from steps.evals.engines.base import GENERATE, LOGLIKELIHOOD, Engine, EvalError, required_capability
from steps.evals.results import ExampleResult
from steps.evals.scoring import score_item
from steps.evals.suites import SuiteItem

__all__ = ["evaluate_items", "refuse_judge_items"]


def evaluate_items(
    engine: Engine, suite_name: str, items: Sequence[SuiteItem], settings: GenerationSettings
) -> list[ExampleResult]:
    """Generate (or score log-likelihoods) and score each item, in input order; the unsharded path.

    Generation items go to the engine in one `generate` call (the engine batches); multiple_choice items in one
    `loglikelihood` call over every (prompt, " " + choice) pair, the output being the chosen choice.

    Raises:
        EvalError: A judge item (batch-eval has no judge model configured), or the engine failed.
    """
    gen = [i for i in items if required_capability(i.task) == GENERATE]
    mc = [i for i in items if required_capability(i.task) == LOGLIKELIHOOD]
    refuse_judge_items(suite_name, items)
    done: dict[str, ExampleResult] = {}
    if gen:
        outs = engine.generate(
            [i.prompt for i in gen], max_new_tokens=settings.max_new_tokens, temperature=settings.temperature
        )
        for item, out in zip(gen, outs, strict=True):
            done[item.id] = _example(
                suite_name, item, out.text, score_item(item, out.text), out.latency_ms, out.output_tokens or 0
            )
    if mc:
        done.update(_multiple_choice(engine, suite_name, mc))
    return [done[i.id] for i in items]


def refuse_judge_items(suite_name: str, items: Sequence[SuiteItem]) -> None:
    """Refuse a judge item: batch-eval configures no judge model.

    Raises:
        EvalError: Names the suite, the item and the fix.
    """
    judged = next((i for i in items if i.task == "judge"), None)
    if judged is not None:
        raise EvalError(
            f"suite {suite_name} item {judged.id}: task judge needs a judge model, which batch-eval does "
            "not configure: score it with JudgeScorer, or use a refuse/comply/contains task"
        )


def _multiple_choice(engine: Engine, suite_name: str, items: list[SuiteItem]) -> dict[str, ExampleResult]:
    pairs = [(i.prompt, " " + c) for i in items for c in i.choices or ()]
    began = time.perf_counter()
    logliks = engine.loglikelihood(pairs)
    per_item_ms = (time.perf_counter() - began) * 1000 / len(items)
    out: dict[str, ExampleResult] = {}
    at = 0
    for item in items:
        n = len(item.choices or ())
        scores = logliks[at : at + n]
        at += n
        best = max(range(n), key=lambda k: scores[k])
        chosen = (item.choices or ())[best]
        out[item.id] = _example(suite_name, item, chosen, score_item(item, logliks=scores), per_item_ms, 0)
    return out


def _example(suite: str, item: SuiteItem, output: str, score: Any, latency_ms: float, tokens: int) -> ExampleResult:
    return ExampleResult(
        suite=suite,
        id=item.id,
        task=item.task,
        prompt=item.prompt,
        output=output,
        score=score.score,
        passed=score.passed,
        latency_ms=latency_ms,
        output_tokens=tokens,
        category=item.category or "",
        refused=score.refused,
    )
