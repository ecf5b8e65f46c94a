"""Argo's `retryStrategy` for the local runner: limit, retryPolicy, backoff and `expression`.

As Argo's controller (workflow/controller/operator.go, processNodeRetries): the Retry node takes the phase of
its last attempt; "No more retries left" when the limit is spent, "retryStrategy.expression evaluated to false",
"Backoff would exceed max duration limit" or "Max duration limit exceeded" when those stop it. Policies:
OnFailure (default) retries Failed, OnError retries Error, Always both, OnTransientError a Failed or Error whose
message is one of Kubernetes' transient errors. The wait before attempt n+1 is duration * factor^n, capped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from registry.errors import WorkflowError
from workflows.argo.expressions import Value, evaluate
from workflows.runner.nodes import Node
from workflows.runner.pods import parse_duration

__all__ = ["Backoff", "expression_allows", "retry_scope", "retry_wanted", "POLICIES"]

POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
# Argo's errorsutil.IsTransientErr: API-server and network troubles worth another attempt.
_TRANSIENT = re.compile(
    r"(?i)too many requests|timeout|connection (reset|refused)|broken pipe|i/o timeout|"
    r"transport is closing|unexpected eof|no such host|is being terminated|etcdserver|try again"
)
_FUNCTION_WORDS = {"and": "&&", "or": "||", "not": "!"}
_UNSUPPORTED = re.compile(r"\[|\?|\bin\b|\bmatches\b|\bcontains\b|\b(?!asInt\(|asFloat\()[A-Za-z_]\w*\(")


class Backoff:
    """`retryStrategy.backoff`: duration, factor, cap and maxDuration, in seconds."""

    def __init__(self, strategy: Mapping[str, Any], where: str) -> None:
        backoff = strategy.get("backoff") or {}
        self.duration = parse_duration(backoff["duration"], where) if "duration" in backoff else 0.0
        self.factor = float(backoff.get("factor") or 1)
        self.cap = parse_duration(backoff["cap"], where) if backoff.get("cap") else None
        self.max_duration = parse_duration(backoff["maxDuration"], where) if backoff.get("maxDuration") else None

    def wait(self, attempt: int) -> float:
        """Seconds to wait after attempt number `attempt` (0-based) failed."""
        wait = self.duration * self.factor**attempt
        return min(wait, self.cap) if self.cap is not None else wait


def retry_wanted(phase: str, message: str, policy: str) -> bool:
    """Whether an attempt that ended in `phase` is retried under `policy` (Argo's RetryPolicyActual)."""
    if phase not in ("Failed", "Error"):
        return False
    if policy == "Always":
        return True
    if policy == "OnError":
        return phase == "Error"
    if policy == "OnTransientError":
        return bool(_TRANSIENT.search(message))
    return phase == "Failed"


def expression_allows(expression: str, attempt: Node, where: str) -> bool:
    """Evaluate `retryStrategy.expression` with `lastRetry.exitCode|status|duration|message` of `attempt`.

    Argo's expression language is expr-lang; the runner evaluates the comparisons and `&& || !` (or `and`,
    `or`, `not`) of `workflows.argo.expressions`, with `asInt(...)`/`asFloat(...)` as no-ops (numbers compare
    as numbers), and refuses the rest (lists, `in`, `matches`, other functions) naming it.

    Raises:
        WorkflowError: The expression uses what the runner cannot evaluate, or does not parse.
    """
    found = _UNSUPPORTED.search(expression)
    if found:
        raise WorkflowError(
            f"{where}: expression uses {found.group(0)!r}, which the local runner cannot evaluate; "
            "compare lastRetry.* fields joined with && / ||"
        )
    text = re.sub(r"\bas(?:Int|Float)\(([^()]*)\)", r"\1", expression)
    text = re.sub(r"\b(and|or|not)\b", lambda m: _FUNCTION_WORDS[m.group(1)], text)
    fields = {
        "lastRetry.exitCode": str(attempt.exit_code if attempt.exit_code is not None else -1),
        "lastRetry.status": attempt.phase,
        "lastRetry.duration": f"{attempt.duration:.3f}",
        "lastRetry.message": attempt.message,
    }

    def resolve(word: str) -> Value:
        if word in fields:
            value = fields[word]
            try:
                return float(value)
            except ValueError:
                return value
        if word in ("true", "false"):
            return word == "true"
        try:
            return float(word)
        except ValueError as e:
            raise WorkflowError(
                f"{where}: unknown name {word!r}; use lastRetry.exitCode|status|duration|message"
            ) from e

    try:
        value = evaluate(text, resolve)
    except WorkflowError as e:
        raise WorkflowError(f"{where}: expression {expression!r} does not evaluate: {e}") from e
    if not isinstance(value, bool):
        raise WorkflowError(f"{where}: expression {expression!r} is not true or false")
    return value


def retry_scope(attempt: int, last: Node | None) -> dict[str, str]:
    """`retries` and the previous attempt's `lastRetry.*`, as Argo substitutes them into the template."""
    return {
        "retries": str(attempt),
        "lastRetry.exitCode": str(last.exit_code) if last and last.exit_code is not None else "0",
        "lastRetry.status": last.phase if last else "",
        "lastRetry.duration": f"{last.duration:.3f}" if last else "0",
        "lastRetry.message": last.message if last else "",
    }
