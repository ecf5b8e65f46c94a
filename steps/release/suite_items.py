"""The one schema of an eval suite's line: onboarding (Great Expectations) and `load_suite` (batch-eval) share it.

A suite is a JSONL file, one object a line: `{"id": str, "prompt": str, "task": str, ...}` plus the fields the
task needs (`REQUIRED_FIELDS`). `SuiteItem` is the schema; `check_item` validates one line's object against it
and says what is wrong in one line naming the field and the fix. Onboarding
(`steps.onboarding.datasets`) builds its table expectations from `REQUIRED_FIELDS` and checks every row with
`check_item`; `steps.evals.suites.load_suite` parses every line with `check_item`: a suite onboarding accepts is
one batch-eval can load, and the other way round.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["REQUIRED_FIELDS", "TASKS", "SuiteItem", "Task", "check_item"]

Task = Literal["exact_match", "contains", "regex", "multiple_choice", "judge", "refuse", "comply", "pii"]
TASKS: tuple[str, ...] = get_args(Task)

REQUIRED_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("exact_match", ("expected",)),
    ("contains", ("expected",)),
    ("regex", ("pattern",)),
    ("multiple_choice", ("choices", "answer")),
    ("judge", ("rubric",)),
    ("refuse", ("category",)),
    ("comply", ("category",)),
    ("pii", ("pattern",)),
)
"""The fields each task needs besides id and prompt (a tuple of pairs: immutable)."""


class SuiteItem(BaseModel):
    """One prompt of a suite and how to score the answer to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    task: Task
    expected: str | None = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    answer: int | None = Field(default=None, strict=True)  # an index: not "0", not true, not 1.0
    rubric: str | None = None
    category: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_task_fields(self) -> SuiteItem:
        needed = dict(REQUIRED_FIELDS)[self.task]
        for name in needed:
            if getattr(self, name) is None:
                raise ValueError(f"task {self.task} needs field '{name}': add it")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"field 'pattern' is not a valid regex ({e}): fix the pattern") from e
        if self.task == "multiple_choice":
            assert self.choices is not None and self.answer is not None  # checked above
            if len(self.choices) < 2:
                raise ValueError("field 'choices' needs at least 2 choices: add choices")
            if not 0 <= self.answer < len(self.choices):
                last = len(self.choices) - 1
                raise ValueError(f"field 'answer' is {self.answer}, not an index of choices (0..{last}): fix it")
        return self


def check_item(raw: Mapping[str, Any]) -> SuiteItem:
    """Validate one suite line's object against `SuiteItem`.

    Raises:
        ValueError: One line naming the first problem (unknown task, missing or unknown field, bad value) and
            the fix; callers prefix the file and line and raise their own error type.
    """
    task = raw.get("task")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    try:
        return SuiteItem.model_validate(dict(raw))
    except ValidationError as e:
        raise ValueError(_describe(e)) from e


def _describe(error: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field and the fix."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(field, SuiteItem.model_fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field '{field}'{hint}: fix or remove it, or put free-form data under 'meta'"
    if first["type"] == "missing":
        return f"missing field '{field}': add it"
    if not field:  # a model-level check (task fields, regex, answer index)
        return str(first["msg"]).removeprefix("Value error, ")
    return f"field '{field}': {first['msg']}: fix the value"
