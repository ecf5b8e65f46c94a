"""Argo tag substitution and the govaluate-style `when` / `depends` grammar."""

from __future__ import annotations

import pytest

from registry.errors import WorkflowError
from workflows.argo.expressions import depends_names, evaluate, evaluate_depends, evaluate_when, substitute


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("heads == heads", True),
        ("heads == tails", False),
        ("'a b' == 'a b'", True),
        ("5 > 3", True),
        ("10 < 9", False),
        ("2.5 >= 2.5", True),
        ("true", True),
        ("!false", True),
        ("1 == 1 && (2 == 3 || abc != abd)", True),
        ("'v1.2.3' =~ '^v[0-9]+'", True),
        ("prod !~ 'dev|stage'", True),
        ("Succeeded != Succeeded", False),
    ],
)
def test_when_expressions(expr: str, expected: bool) -> None:
    """GIVEN a substituted `when` WHEN evaluated THEN it matches govaluate's answer."""
    assert evaluate_when(expr) is expected


@pytest.mark.parametrize("expr", ["heads ==", "(true", "1 2", "abc", "'x' < 3"])
def test_bad_when_expressions_raise(expr: str) -> None:
    """GIVEN a malformed or non-boolean condition WHEN evaluated THEN a WorkflowError names it."""
    with pytest.raises(WorkflowError, match="when"):
        evaluate_when(expr)


def test_depends_uses_the_resolver() -> None:
    """GIVEN task results WHEN a depends expression is evaluated THEN names resolve through the callback."""
    phases = {"A": True, "B.Failed": False, "C.Succeeded": True}
    assert evaluate("A && (B.Failed || C.Succeeded)", phases.__getitem__) is True
    assert evaluate("A && B.Failed", phases.__getitem__) is False


def test_depends_names_and_results() -> None:
    """GIVEN a depends expression WHEN its names are listed and it is decided THEN each task once, in order, and
    each operand answered by (task, result suffix); comparisons and strings are refused."""
    assert depends_names("b.Failed || (a && !b.Skipped) || c-1.AllFailed") == ["b", "a", "c-1"]
    asked: list[tuple[str, str]] = []

    def result(task: str, suffix: str) -> bool:
        asked.append((task, suffix))
        return {("a", ""): True, ("b", "Failed"): False}[(task, suffix)]

    assert evaluate_depends("a && !b.Failed", result) is True
    assert asked == [("a", ""), ("b", "Failed")]
    for expr, fault in [("a == b", "unexpected '== b'"), ("'a'", "unexpected \"'a'\""), ("a &", "unexpected '&'")]:
        with pytest.raises(WorkflowError, match=fault):
            depends_names(expr)


def test_substitute_strict_and_lenient() -> None:
    """GIVEN a scope WHEN substituting THEN known tags resolve, unknown ones fail strictly or stay leniently."""
    scope = {"inputs.parameters.x": "1", "workflow.name": "wf"}
    assert substitute("{{inputs.parameters.x}}-{{ workflow.name }}", scope, where="t") == "1-wf"
    assert substitute("{{nope}}", scope, where="t", strict=False) == "{{nope}}"
    with pytest.raises(WorkflowError, match="t: unresolved reference '{{nope}}'"):
        substitute("{{nope}}", scope, where="t")
    assert substitute("{{=1+1}}", scope, where="t") == "2"  # expression tags: workflows/argo/exprlang.py
    with pytest.raises(WorkflowError, match="expression tag '{{=nope}}': unknown name 'nope'"):
        substitute("{{=nope}}", scope, where="t")
