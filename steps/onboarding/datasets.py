"""Eval datasets: JSONL suites of cases, parsed with line numbers and validated with Great Expectations 1.x.

Each line is a JSON object {id, prompt, task, ...}; the task type says which other fields it needs. The schema is
`steps.release.suite_items`, the one batch-eval's `load_suite` parses with: a suite accepted here loads there.
Great Expectations (an ephemeral context, a pandas dataframe, no data docs, no analytics, no progress bars)
checks the table: at least one row, ids non-null and unique, prompts non-empty, tasks known, and every task's
required fields (`REQUIRED_FIELDS`) non-null. Each failed expectation becomes a one-line `OnboardingError` naming
the file, the column and the failing ids. Every row is then checked against the schema itself (`check_item`):
types, unknown fields, regexes that compile, a multiple-choice answer that indexes its choices.

A suite that passed is remembered by its content digest and `checks_key()` (these checks' code and Great
Expectations' version) in the store the onboard step gives (`s3://<bucket>/evals/datasets`): the same bytes under
the same checks pass again, so the next release of any model skips Great Expectations (its import alone is seconds
of every onboard pod). A failure is never remembered: a fixed file has another digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from registry.errors import OnboardingError
from steps.core.hashing import sha256_file
from steps.onboarding.sources import resolve_under_root
from steps.release.records import DatasetRecord
from steps.release.spec import Evals, Suite
from steps.release.suite_items import REQUIRED_FIELDS, check_item

__all__ = ["TASK_FIELDS", "PassedChecks", "check_datasets", "checks_key", "load_cases", "validate_suite"]

TASK_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(dict(REQUIRED_FIELDS))
"""The fields each task needs besides id and prompt: the schema's own table (`steps.release.suite_items`)."""
_SHOWN = 5


@dataclass(frozen=True)
class Cases:
    """The parsed rows of one suite, with the line each came from."""

    label: str
    rows: list[dict[str, Any]]
    lines: list[int]

    def who(self, indexes: list[int]) -> str:
        """`ids 'a', 'b' (lines 3, 7)` for row indexes, at most a few shown."""
        picked = sorted(set(indexes))
        ids = [self.rows[i].get("id") for i in picked[:_SHOWN]]
        lines = [str(self.lines[i]) for i in picked[:_SHOWN]]
        more = f", {len(picked)} in all" if len(picked) > _SHOWN else ""
        shown = ", ".join(repr(i) for i in ids if i is not None)
        return f"ids {shown or '(none)'} (lines {', '.join(lines)}{more})"


class PassedChecks(Protocol):
    """Where suites that passed are remembered: `steps.evals.store.EvalStore` (S3 or a folder) has this shape."""

    def read(self, name: str) -> str | None: ...  # noqa: D102

    def write(self, name: str, text: str) -> None: ...  # noqa: D102


def check_datasets(evals: Evals, root: Path, passed: PassedChecks | None = None) -> list[DatasetRecord]:
    """Validate every suite of the spec (quality suites, then safety) and describe each.

    Args:
        evals: The spec's `evals`.
        root: The directory relative suite paths are resolved under (and may not escape).
        passed: Suites that passed before, by content digest and checks (`checks_key`): a suite found there is
            not validated again (its bytes and the checks are the same, so is the outcome); one that passes now is
            added. None: every suite is validated.

    Raises:
        OnboardingError: A file is missing, a line is not a JSON object, or a check failed.
    """
    contexts: list[Any] = []  # Great Expectations' context, made on the first suite not validated before

    def context() -> Any:
        if not contexts:
            contexts.append(_ephemeral_context())
        return contexts[0]

    suites = [(f"evals.suites[{i}].path", s) for i, s in enumerate(evals.suites)] + [
        ("evals.safety.path", evals.safety)
    ]
    key = checks_key() if passed is not None else ""
    return [_check_suite(context, field, suite, root, passed, key) for field, suite in suites]


def checks_key() -> str:
    """What a pass depends on besides the suite's bytes: this module, the suite schema, Great Expectations' version."""
    from steps.release import suite_items

    digest = hashlib.sha256(metadata.version("great_expectations").encode())
    for module in (__file__, suite_items.__file__):
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:16]


def _check_suite(
    context: Callable[[], Any], field: str, suite: Suite, root: Path, passed: PassedChecks | None, key: str
) -> DatasetRecord:
    path = resolve_under_root(suite.path, root, field)
    digest, _ = sha256_file(path)
    name = f"{digest}-{key}.json"
    known = _passed_before(passed, name)
    if known is not None:
        rows, tasks = known
    else:
        cases = load_cases(path, suite.path)
        validate_suite(context(), suite.name, cases)
        rows, tasks = len(cases.rows), sorted({str(row["task"]) for row in cases.rows})
        if passed is not None:
            passed.write(name, json.dumps({"rows": rows, "task_types": tasks, "checked_as": suite.name}) + "\n")
    return DatasetRecord(name=suite.name, path=suite.path, sha256=digest, rows=rows, task_types=tasks)


def _passed_before(passed: PassedChecks | None, name: str) -> tuple[int, list[str]] | None:
    """(rows, task types) of a suite that passed these checks before, or None (never, or an unreadable record)."""
    text = passed.read(name) if passed is not None else None
    try:
        record = json.loads(text) if text else None
        return (int(record["rows"]), [str(t) for t in record["task_types"]]) if record else None
    except (ValueError, KeyError, TypeError):
        return None  # validated again, and written afresh


def load_cases(path: Path, label: str) -> Cases:
    """Parse a JSONL file; blank lines are skipped.

    Raises:
        OnboardingError: A line is not JSON or not an object, or an id/prompt has the wrong type; names the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise OnboardingError(f"{label}: unreadable eval suite ({e}); fix the file") from e
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise OnboardingError(
                f"{label}:{number}: malformed JSON ({e.msg}, column {e.colno}); fix line {number}"
            ) from e
        if not isinstance(row, dict):
            raise OnboardingError(
                f"{label}:{number}: expected a JSON object {{id, prompt, task, ...}}; fix line {number}"
            )
        for key, kinds in (("id", (str, int)), ("prompt", (str,)), ("task", (str,))):
            value = row.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise OnboardingError(f"{label}:{number}: column '{key}' must be a string, got {value!r}; fix it")
        rows.append(row)
        lines.append(number)
    return Cases(label, rows, lines)


def validate_suite(context: Any, name: str, cases: Cases) -> None:
    """Run the suite's expectations with Great Expectations, then the per-row semantic checks.

    Args:
        context: A Great Expectations context (`_ephemeral_context()`).
        name: The suite name (the data asset's name).
        cases: The parsed rows.

    Raises:
        OnboardingError: The first failed check, naming the file, the column and the failing ids.
    """
    import great_expectations as gx
    import pandas as pd
    from great_expectations.expectations.row_conditions import Column

    columns = ["id", "prompt", "task", *sorted({f for fields in TASK_FIELDS.values() for f in fields})]
    frame = pd.DataFrame(
        [{c: (str(r[c]) if c == "id" and r.get(c) is not None else r.get(c)) for c in columns} for r in cases.rows],
        columns=columns,
        dtype=object,
    )
    expectations = _expectations(gx.expectations, Column)
    asset = context.data_sources.add_pandas(f"suite-{name}").add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=name, expectations=[e for e, _ in expectations])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failed = [r for r in result.results if not r.success]
    if failed:
        first = failed[0]
        explain = expectations[int(first.expectation_config.meta["check"])][1]
        more = f" (and {len(failed) - 1} more failed checks)" if len(failed) > 1 else ""
        raise OnboardingError(f"{cases.label}: {explain(cases, first.result)}{more}")
    _semantic_checks(cases)


def _expectations(E: Any, column: Any) -> list[tuple[Any, Any]]:  # the gx.expectations module
    """(expectation, explain(cases, result) -> str) pairs; the expectation's meta holds its index."""
    allowed = ", ".join(TASK_FIELDS)
    found: list[tuple[Any, Any]] = [
        (E.ExpectTableRowCountToBeBetween(min_value=1),
         lambda c, r: f"has {r.get('observed_value', 0)} cases, expected at least 1; add eval cases"),
        (E.ExpectColumnValuesToNotBeNull(column="id"),
         lambda c, r: f"column 'id' is null for {_who(c, r)}; give every case an id"),
        (E.ExpectColumnValuesToBeUnique(column="id"),
         lambda c, r: f"column 'id' has duplicate values: {_who(c, r)}; make the ids unique"),
        (E.ExpectColumnValuesToNotBeNull(column="prompt"),
         lambda c, r: f"column 'prompt' is missing for {_who(c, r)}; write a prompt"),
        (E.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1),
         lambda c, r: f"column 'prompt' is empty for {_who(c, r)}; write a prompt"),
        (E.ExpectColumnValuesToBeInSet(column="task", value_set=list(TASK_FIELDS)),
         lambda c, r: f"column 'task' is unknown for {_who(c, r)} (allowed: {allowed}); fix the task"),
    ]  # fmt: skip
    for task, fields in TASK_FIELDS.items():
        for field in fields:
            check = E.ExpectColumnValuesToNotBeNull(column=field, row_condition=column("task") == task)
            found.append((check, _required(task, field)))
    for index, (expectation, _) in enumerate(found):
        expectation.meta = {"check": index}
    return found


def _required(task: str, field: str) -> Any:
    return lambda c, r: f"column '{field}' is required for task '{task}' but missing for {_who(c, r)}; add it"


def _who(cases: Cases, result: Mapping[str, Any]) -> str:
    return cases.who([int(i) for i in result.get("unexpected_index_list") or []])


def _semantic_checks(cases: Cases) -> None:
    """Every row against the suite schema that `load_suite` parses with; the first problem, naming its line."""
    for row, line in zip(cases.rows, cases.lines, strict=True):
        try:
            check_item(row)
        except ValueError as e:
            raise OnboardingError(f"{cases.label}:{line}: case {row.get('id')!r}: {e}") from e


def _ephemeral_context() -> Any:
    """A Great Expectations ephemeral context: no files, no data docs, no analytics, no progress bars."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")
