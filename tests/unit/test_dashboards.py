"""The Grafana dashboards in infrastructure/grafana/: valid JSON models whose PromQL reads only real metrics.

Every panel's `expr` (and every templating query) is parsed with a real PromQL parser (promql-parser, the Rust
parser of GreptimeDB) after Grafana's variables are substituted; every metric name it selects must be one
llmrelease emits (`steps.evidence.metrics.METRICS`) or one of the documented external metrics (`EXTERNAL_METRICS`: vLLM,
HAProxy, Argo, Prometheus, Pushgateway). The checker is tested on a planted unknown metric too.
"""

import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from steps.evidence.metrics import METRICS, allowed_metric_names

try:
    import promql_parser
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        pytest.fail("promql-parser is not installed in CI: pip install promql-parser", pytrace=False)
    pytest.skip("promql-parser is not installed: pip install promql-parser", allow_module_level=True)

GRAFANA = Path(__file__).resolve().parents[2] / "infrastructure" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
_GRAFANA_RANGES = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query of a dashboard."""
    for panel in _panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} target {target.get('refId')}", str(target["expr"])
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            match = _LABEL_VALUES.match(text)
            if match and match.group(1):
                yield f"variable {var.get('name')!r}", match.group(1)
            elif not match:
                yield f"variable {var.get('name')!r}", text


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (by name or by an equality `__name__` matcher).

    Raises:
        ValueError: The expression is not valid PromQL (after Grafana's range variables become 5m).
    """
    tree = promql_parser.parse(_GRAFANA_RANGES.sub("5m", expr))
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
                    names.add(m.value)
        return True

    promql_parser.walk(tree, visit)
    return names


def problems(dashboard: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    """Every query that does not parse, and every metric a query reads that is not allowed."""
    found = []
    for where, expr in queries(dashboard):
        try:
            unknown = sorted(metric_names(expr) - allowed)
        except ValueError as e:
            found.append(f"{dashboard.get('uid')}: {where}: not valid PromQL ({e})")
            continue
        found += [f"{dashboard.get('uid')}: {where}: unknown metric {name}" for name in unknown]
    return found


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def test_the_three_dashboards_exist_with_unique_uids_and_panel_ids() -> None:
    """GIVEN infrastructure/grafana WHEN loaded THEN platform-health, finops and quality-trends are there, each a
    dashboard model with a uid, title, datasource variable, and panels with unique ids, a grid position and
    at least one target."""
    assert [p.stem for p in DASHBOARDS] == ["finops", "platform-health", "quality-trends"]
    boards = [_load(p) for p in DASHBOARDS]
    assert len({b["uid"] for b in boards}) == 3
    for board in boards:
        assert board["title"] and board["schemaVersion"] >= 36
        assert any(v["type"] == "datasource" for v in board["templating"]["list"])
        panels = list(_panels(board["panels"]))
        assert len({p["id"] for p in panels}) == len(panels) >= 5
        for panel in panels:
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["targets"], panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_parses_and_reads_only_known_metrics(path: Path) -> None:
    """GIVEN a dashboard WHEN each query is parsed THEN it is valid PromQL reading only emitted metrics."""
    assert problems(_load(path), allowed_metric_names()) == []


def test_every_emitted_metric_is_on_some_dashboard() -> None:
    """GIVEN all dashboards WHEN the metrics they read are collected THEN every metric in METRICS is shown."""
    used = {name for p in DASHBOARDS for _, expr in queries(_load(p)) for name in metric_names(expr)}
    assert sorted(set(METRICS) - used) == []


def test_the_checker_catches_a_planted_unknown_metric() -> None:
    """GIVEN a copy of a dashboard with an unknown metric planted in a nested row panel, one selected by
    __name__, and one unparsable query WHEN checked THEN each is reported, naming the panel and the metric."""
    board = copy.deepcopy(_load(GRAFANA / "finops.json"))
    board["panels"].append(
        {
            "type": "row",
            "title": "planted",
            "panels": [
                {
                    "id": 901,
                    "title": "typo",
                    "targets": [{"refId": "A", "expr": "sum(rate(llmrelease_tokenz[$__rate_interval]))"}],
                },
                {
                    "id": 902,
                    "title": "by name",
                    "targets": [{"refId": "A", "expr": '{__name__="vllm:made_up_total"} > 0'}],
                },
                {"id": 903, "title": "broken", "targets": [{"refId": "A", "expr": "sum(rate(llmrelease_tokens[5m]"}]},
            ],
        }
    )
    found = problems(board, allowed_metric_names())
    assert found[0] == "llmrelease-finops: panel 'typo' target A: unknown metric llmrelease_tokenz"
    assert found[1] == "llmrelease-finops: panel 'by name' target A: unknown metric vllm:made_up_total"
    assert found[2].startswith("llmrelease-finops: panel 'broken' target A: not valid PromQL")
    assert len(found) == 3
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(x_bucket{a="$model"}[$__range])))') == {"x_bucket"}
