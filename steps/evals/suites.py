"""Eval suites: JSONL files of prompts, each with the task that says how its output is scored.

One JSON object a line: `{"id": str, "prompt": str, "task": str, ...}` plus the fields the task needs:

| task            | fields                                  | scored by                                    |
| --------------- | --------------------------------------- | -------------------------------------------- |
| exact_match     | expected                                | normalised equality                          |
| contains        | expected                                | normalised substring                         |
| regex           | pattern                                 | `re.search` on the raw output                |
| multiple_choice | choices (list of str), answer (index)   | argmax of the backend's log-likelihoods      |
| judge           | rubric                                  | an LLM judge through an OpenAI-compatible API |
| refuse          | category                                | refusal detector: must refuse                |
| comply          | category                                | refusal detector: must not refuse            |
| pii             | pattern                                 | the pattern must NOT match the output        |

Blank lines are skipped. Free-form data goes in an optional `meta` object; any other unknown field is an error
(it is usually a typo of a required one). `load_suite` reports every problem as one `EvalError` line naming the
file, the line number and the fix. The schema of a line is `steps.release.suite_items` (onboarding checks suites
with the same one). `Suite.sha256` hashes the file's bytes, so eval results can be keyed by
model digest + suite hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from steps.evals.engines.base import LOGLIKELIHOOD, Engine, EvalError, required_capability
from steps.release.suite_items import REQUIRED_FIELDS, SuiteItem, Task, check_item

__all__ = ["REQUIRED_FIELDS", "Suite", "SuiteItem", "Task", "check_supported", "load_suite"]


class Suite(BaseModel):
    """A loaded suite: its name, where it came from, the digest of its bytes and its items in file order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    path: str
    sha256: str
    items: tuple[SuiteItem, ...]


def load_suite(path: str | Path, name: str | None = None) -> Suite:
    """Load and validate a JSONL suite.

    Args:
        path: The suite file; error messages show it as given.
        name: The suite's name; defaults to the file's stem.

    Returns:
        The suite, with `sha256` the hex digest of the file's bytes.

    Raises:
        EvalError: The file is missing or empty, a line is not a JSON object, a task is unknown, a field is
            missing or malformed, or an id repeats. The message names the file and the line number.
    """
    shown = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise EvalError(f"{shown}: cannot read the suite ({e.strerror}): check the path in the release spec") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EvalError(f"{shown}: not UTF-8 text (byte {e.start}): save the suite as UTF-8") from e
    items: list[SuiteItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = _parse_line(shown, number, line)
        if item.id in seen:
            raise EvalError(f"{shown} line {number}: id '{item.id}' repeats line {seen[item.id]}: make ids unique")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise EvalError(f"{shown}: the suite has no items: add at least one JSON line")
    return Suite(name=name or Path(path).stem, path=shown, sha256=hashlib.sha256(data).hexdigest(), items=tuple(items))


def _parse_line(shown: str, number: int, line: str) -> SuiteItem:
    """Parse one non-blank line into a `SuiteItem`, or raise an `EvalError` naming the line."""
    where = f"{shown} line {number}"
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise EvalError(f"{where}: not valid JSON ({e.msg} at column {e.colno}): fix or remove the line") from e
    if not isinstance(raw, dict):
        raise EvalError(f"{where}: expected a JSON object, got {type(raw).__name__}: write one object a line")
    try:
        return check_item(raw)
    except ValueError as e:
        raise EvalError(f"{where}: {e}") from e


def check_supported(suite: Suite, engine: Engine) -> None:
    """Refuse a suite the engine cannot run, before anything is sent.

    Raises:
        EvalError: Names the first item whose task needs a capability the engine lacks.
    """
    for item in suite.items:
        need = required_capability(item.task)
        if need in engine.capabilities:
            continue
        if need == LOGLIKELIHOOD:
            raise EvalError(
                f"suite {suite.name} item {item.id}: task {item.task} needs log-likelihoods, which backend "
                f"{engine.name} cannot give; run it on the transformers or vllm backend or drop the item"
            )
        raise EvalError(
            f"suite {suite.name} item {item.id}: task {item.task} needs generation, which backend {engine.name} "
            "cannot give; run it on another backend or drop the item"
        )
