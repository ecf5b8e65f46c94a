"""Expression tags `{{=...}}`: the expr-lang subset of Argo's examples, through `substitute` as the runner calls it."""

from __future__ import annotations

import pytest

from registry.errors import WorkflowError
from workflows.argo.expressions import substitute

SCOPE = {
    "inputs.parameters": '[{"name": "n", "value": "4"}]',
    "inputs.parameters.n": "4",
    "inputs.parameters.dash-name": "yes",
    "workflow.parameters.doc": '{"items": [{"v": "a"}, {"v": "b"}], "temps": [3, 9, 6]}',
    "workflow.parameters.b64": "aGVsbG8=",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{=asInt(inputs.parameters.n) * 10}}", "40"),
        ("{{=inputs.parameters['dash-name'] == 'yes'}}", "true"),
        ("{{=toJson(filter([1, 5, 7], {# > 4}))}}", "[5,7]"),
        ("{{=toJson(map([1, 2], {# * 2}))}}", "[2,4]"),
        ("{{=jsonpath(workflow.parameters.doc, '$.items[1].v')}}", "b"),
        ("{{=sprig.add(2, 3, 4) / 2}}", "4.5"),
        ("{{=sprig.max(jsonpath(workflow.parameters.doc, '$.temps')[0], 7)}}", "7"),
        ("{{=sprig.b64dec(workflow.parameters.b64)}}", "hello"),
        ("{{=toJson({a: 1, b: [true, nil]})}}", '{"a":1,"b":[true,null]}'),
        ("{{=2 ** 3 ** 2}} {{=1 + 2 * 3}} {{=-(1 - 3)}}", "512 7 2"),
        ('{{="x" in ["x"] ? "in" : "out"}}', "in"),
        ("{{=all([1, 2], {# > 0}) && !any([1, 2], {# > 5})}}", "true"),
        ("{{=count([1, 2, 3], {# >= 2})}}", "2"),
        ("a {{inputs.parameters.n}} {{=string(asFloat(inputs.parameters.n) / 8)}}", "a 4 0.5"),
    ],
)
def test_expression_tags_evaluate_as_argo_inserts_them(text: str, expected: str) -> None:
    """GIVEN an expression tag WHEN substituted THEN its value, strings as is and the rest as JSON."""
    assert substitute(text, SCOPE, where="t") == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("{{=nothing + 1}}", "unknown name 'nothing'"),
        ("{{=jsonpath('not json', '$.a')}}", "JSONDecodeError"),
        ("{{=sprig.nope(1)}}", "sprig.nope() is not supported"),
        ("{{=filter([1], 1)}}", "takes an array and a closure"),
        ("{{=(1 + }}", "expected"),
    ],
)
def test_bad_expressions_are_one_line_naming_the_tag(text: str, named: str) -> None:
    """GIVEN an expression that names nothing, fails or does not parse WHEN substituted strictly THEN one error
    naming the tag and why; non-strict leaves the tag for later, as Argo's allowUnresolved."""
    with pytest.raises(WorkflowError, match="expression tag") as caught:
        substitute(text, SCOPE, where="t")
    assert named in str(caught.value) and "\n" not in str(caught.value)
    assert substitute(text, SCOPE, where="t", strict=False) == text
