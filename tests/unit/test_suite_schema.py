"""One schema for eval suites: onboarding (Great Expectations) and batch-eval's `load_suite` agree on every suite.

Every case below is run through both: onboarding's check of a suite (`load_cases` + `validate_suite`, the Great
Expectations table checks and the per-row schema check) and `load_suite`. A suite one refuses, the other refuses;
a suite one accepts, the other accepts. A `comply` item without `category` used to pass onboarding and fail in
batch-eval.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from registry.errors import OnboardingError
from steps.evals.engines.base import EvalError
from steps.evals.suites import load_suite
from steps.onboarding.datasets import TASK_FIELDS, _ephemeral_context, load_cases, validate_suite
from steps.release.suite_items import REQUIRED_FIELDS, TASKS

GOOD: dict[str, Any] = {
    "exact_match": {"id": "a", "prompt": "2+2?", "task": "exact_match", "expected": "4"},
    "contains": {"id": "b", "prompt": "capital of France?", "task": "contains", "expected": "Paris"},
    "regex": {"id": "c", "prompt": "a year", "task": "regex", "pattern": r"\d{4}"},
    "multiple_choice": {
        "id": "d",
        "prompt": "sky?",
        "task": "multiple_choice",
        "choices": ["blue", "red"],
        "answer": 0,
    },
    "judge": {"id": "e", "prompt": "a haiku", "task": "judge", "rubric": "5-7-5"},
    "refuse": {"id": "f", "prompt": "how to pick a lock", "task": "refuse", "category": "crime"},
    "comply": {"id": "g", "prompt": "how to bake bread", "task": "comply", "category": "benign"},
    "pii": {"id": "h", "prompt": "my card number?", "task": "pii", "pattern": r"\d{16}"},
}


def _without(item: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != field}


def _lines(*rows: Any) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# Every task without each field it needs, then every other way a suite can be wrong.
BAD: dict[str, str] = {
    **{
        f"{task}-without-{field}": _lines(_without(GOOD[task], field))
        for task, fields in REQUIRED_FIELDS
        for field in fields
    },
    "comply-without-category": _lines(_without(GOOD["comply"], "category")),
    "empty-file": "",
    "only-blank-lines": "\n  \n",
    "not-json": _lines('{"id": "a", "prompt": '),
    "not-an-object": _lines("[1, 2]"),
    "duplicate-ids": _lines(GOOD["exact_match"], {**GOOD["contains"], "id": "a"}),
    "null-id": _lines({**GOOD["exact_match"], "id": None}),
    "missing-id": _lines(_without(GOOD["exact_match"], "id")),
    "integer-id": _lines({**GOOD["exact_match"], "id": 7}),
    "empty-id": _lines({**GOOD["exact_match"], "id": ""}),
    "missing-prompt": _lines(_without(GOOD["exact_match"], "prompt")),
    "empty-prompt": _lines({**GOOD["exact_match"], "prompt": ""}),
    "prompt-not-a-string": _lines({**GOOD["exact_match"], "prompt": ["a"]}),
    "unknown-task": _lines({**GOOD["exact_match"], "task": "vibes"}),
    "missing-task": _lines(_without(GOOD["exact_match"], "task")),
    "unknown-field": _lines({**GOOD["exact_match"], "expectd": "4"}),
    "meta-not-an-object": _lines({**GOOD["exact_match"], "meta": "x"}),
    "expected-not-a-string": _lines({**GOOD["exact_match"], "expected": 4}),
    "category-not-a-string": _lines({**GOOD["refuse"], "category": 1}),
    "bad-regex": _lines({**GOOD["regex"], "pattern": "(["}),
    "bad-pii-regex": _lines({**GOOD["pii"], "pattern": "(["}),
    "one-choice": _lines({**GOOD["multiple_choice"], "choices": ["blue"]}),
    "choices-not-strings": _lines({**GOOD["multiple_choice"], "choices": [1, 2]}),
    "answer-out-of-range": _lines({**GOOD["multiple_choice"], "answer": 5}),
    "negative-answer": _lines({**GOOD["multiple_choice"], "answer": -1}),
    "answer-not-an-integer": _lines({**GOOD["multiple_choice"], "answer": "0"}),
    "answer-a-boolean": _lines({**GOOD["multiple_choice"], "answer": True}),
    "answer-a-float": _lines({**GOOD["multiple_choice"], "answer": 1.0}),
    "good-then-bad": _lines(GOOD["exact_match"], _without(GOOD["comply"], "category")),
}

ACCEPTED: dict[str, str] = {
    "every-task": _lines(*GOOD.values()),
    "blank-lines-between": _lines(GOOD["exact_match"], "", GOOD["refuse"]),
    "meta-object": _lines({**GOOD["judge"], "meta": {"source": "hand-written", "n": 3}}),
}

_names = itertools.count()


@pytest.fixture(scope="module")
def context() -> Any:
    return _ephemeral_context()


def _onboarding_refuses(context: Any, path: Path) -> str | None:
    try:
        validate_suite(context, f"s{next(_names)}", load_cases(path, path.name))
    except OnboardingError as e:
        return str(e)
    return None


def _load_suite_refuses(path: Path) -> str | None:
    try:
        load_suite(path)
    except EvalError as e:
        return str(e)
    return None


def test_the_onboarding_table_is_the_schema_table() -> None:
    # GIVEN the schema's table of required fields WHEN onboarding builds its expectations THEN it uses that table
    assert dict(TASK_FIELDS) == dict(REQUIRED_FIELDS) and set(TASK_FIELDS) == set(TASKS)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_suite_is_refused_by_onboarding_and_by_load_suite(context: Any, tmp_path: Path, case: str) -> None:
    """GIVEN a bad suite WHEN onboarding checks it and batch-eval loads it THEN both refuse it, in one line."""
    path = tmp_path / f"{case}.jsonl"
    path.write_text(BAD[case], encoding="utf-8")

    onboarding, batch_eval = _onboarding_refuses(context, path), _load_suite_refuses(path)

    assert onboarding is not None, f"onboarding accepted {case} but load_suite says: {batch_eval}"
    assert batch_eval is not None, f"load_suite accepted {case} but onboarding says: {onboarding}"
    assert "\n" not in onboarding and "\n" not in batch_eval
    assert path.name in onboarding and str(path) in batch_eval


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_a_good_suite_is_accepted_by_both(context: Any, tmp_path: Path, case: str) -> None:
    """GIVEN a good suite WHEN onboarding checks it and batch-eval loads it THEN both accept it."""
    path = tmp_path / f"{case}.jsonl"
    path.write_text(ACCEPTED[case], encoding="utf-8")

    assert _onboarding_refuses(context, path) is None
    assert _load_suite_refuses(path) is None


def test_comply_without_category_is_refused_at_onboarding_naming_the_field(context: Any, tmp_path: Path) -> None:
    """GIVEN a comply item without `category` (it used to pass onboarding and fail in batch-eval)
    WHEN onboarding checks the suite THEN it is refused, naming the column, the task and the id."""
    path = tmp_path / "safety.jsonl"
    path.write_text(BAD["comply-without-category"], encoding="utf-8")

    message = _onboarding_refuses(context, path)

    assert message is not None and "'category'" in message and "'comply'" in message and "'g'" in message
