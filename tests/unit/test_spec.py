"""The release spec and the platform policy: loading, one-line errors naming the field, the JSON schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.errors import PolicyError, SpecError
from steps.release.policy import check_policy, load_policy
from steps.release.spec import ReleaseSpec, load_spec, resolve_spec_path, write_json_schema

REPO = Path(__file__).resolve().parents[2]
MINIMAL: dict[str, Any] = {
    "apiVersion": "llmrelease/v1",
    "name": "x",
    "model": {"name": "x", "source": "models/x", "card": {"license": "mit", "intended_use": "tests"}},
    "evals": {"suites": [{"name": "qa", "path": "qa.jsonl"}], "safety": {"name": "safety", "path": "s.jsonl"}},
}


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "releases" / "x.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def refused(tmp_path: Path, data: Any) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, data))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "releases" / "x.yaml") + ": ")
    return message.removeprefix(str(tmp_path / "releases" / "x.yaml") + ": ")


def with_change(path: str, value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(MINIMAL))
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


def test_demo_specs_load_with_the_defaults_filled_in() -> None:
    """GIVEN the committed demo specs WHEN loaded THEN they describe demo-qa on an L4 with the demo suites."""
    demo = load_spec(str(REPO / "releases" / "demo.yaml"))
    unsafe = load_spec(str(REPO / "releases" / "demo-unsafe.yaml"))
    assert demo.model.name == unsafe.model.name == "demo-qa"
    assert (demo.model.source, unsafe.model.source) == ("examples/models/candidate", "examples/models/candidate-unsafe")
    assert demo.model.serving.target_gpu.name == "nvidia-l4" and demo.model.serving.target_gpu.memory_gib == 24
    assert [s.path for s in demo.evals.suites] + [demo.evals.safety.path] == [
        "suites/golden-qa/v1.jsonl",
        "suites/safety/v1.jsonl",
    ]
    assert demo.rollout.steps == [1, 5, 25, 50, 100] and demo.rollout.router == "haproxy"


def test_minimal_spec_gets_defaults_and_is_frozen(tmp_path: Path) -> None:
    """GIVEN only the required fields WHEN loaded THEN gates and rollout have defaults and the spec is frozen."""
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.gates.safety.max_pii_leak_rate == 0.0 and spec.rollout.approval_required_in == ["stage", "prod"]
    assert spec.model.serving.max_context is None and spec.model.serving.dtype == "bfloat16"
    with pytest.raises(ValueError):
        spec.name = "y"  # type: ignore[misc]


def test_bare_name_means_releases_dir() -> None:
    """GIVEN a bare name WHEN resolved THEN it is releases/<name>.yaml; paths in a releases/ directory stay as given
    (paths elsewhere are refused: tests/unit/test_names.py)."""
    assert resolve_spec_path("demo") == Path("releases/demo.yaml")
    assert resolve_spec_path("releases/x.yml") == Path("releases/x.yml")
    assert resolve_spec_path("/srv/repo/releases/x.yaml") == Path("/srv/repo/releases/x.yaml")


def test_missing_licence_names_the_path_and_the_fix(tmp_path: Path) -> None:
    """GIVEN a card without a licence WHEN loaded THEN the message is the documented one."""
    message = refused(tmp_path, with_change("model.card.license", None))
    assert message == "model.card.license: field required (add the SPDX licence id, e.g. apache-2.0)"


def test_unknown_field_lists_the_allowed_keys(tmp_path: Path) -> None:
    """GIVEN a misspelt gate WHEN loaded THEN the path and the allowed keys are named."""
    message = refused(tmp_path, with_change("gates.qualty", {"min_score": 0.5}))
    assert message.startswith("gates.qualty: unknown field (allowed here: quality, safety, latency, cost")


def test_wrong_type_names_the_value_and_what_is_expected(tmp_path: Path) -> None:
    """GIVEN rollout.steps as a string WHEN loaded THEN the path, the value and the expected shape are named."""
    message = refused(tmp_path, with_change("rollout.steps", "1,5,100"))
    assert message.startswith('rollout.steps: input should be a valid list, got "1,5,100" (expected strictly')


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("rollout.steps", [5, 1, 100], "rollout.steps: steps must be strictly increasing"),
        ("rollout.steps", [1, 50], "rollout.steps: the last step must be 100"),
        ("rollout.steps", [0, 100], "rollout.steps: every step must be in (0, 100]"),
        ("gates.safety.max_attack_success_rate", 1.5, "gates.safety.max_attack_success_rate: input should be less"),
        ("model.serving.quantization", "int3", "model.serving.quantization: input should be 'none', 'int8'"),
        ("model.name", "bad name!", "model.name: string should match pattern"),
        ("apiVersion", "llmrelease/v0", "apiVersion: input should be 'llmrelease/v1'"),
        ("evals.suites", [{"name": "safety", "path": "a.jsonl"}], "evals: suite names must be unique"),
        ("model.serving.target_gpu.memory_gib", -1, "model.serving.target_gpu.memory_gib: input should be greater"),
    ],
)
def test_invalid_values_are_refused_with_their_path(tmp_path: Path, path: str, value: Any, expected: str) -> None:
    """GIVEN one invalid value WHEN loaded THEN the message starts with its dotted path and the problem."""
    assert refused(tmp_path, with_change(path, value)).startswith(expected)


def test_yaml_syntax_errors_and_repeated_keys_name_the_line(tmp_path: Path) -> None:
    """GIVEN broken YAML, then a repeated key WHEN loaded THEN the line is named."""
    assert refused(tmp_path, "name: [x\nmodel: {}\n").startswith("not valid YAML at line")
    assert "repeated key 'name'" in refused(tmp_path, "name: a\nname: b\n")
    assert refused(tmp_path, "- a list\n").startswith("a release spec is a YAML mapping")


def test_missing_spec_file_is_named(tmp_path: Path) -> None:
    """GIVEN a path that does not exist WHEN loaded THEN the error names it."""
    with pytest.raises(SpecError, match="release spec not found"):
        load_spec(str(tmp_path / "releases" / "nope.yaml"))


def test_committed_json_schema_is_up_to_date(tmp_path: Path) -> None:
    """GIVEN the committed schema WHEN regenerated THEN it is identical and uses apiVersion."""
    fresh = write_json_schema(tmp_path / "schema.json").read_text()
    assert fresh == (REPO / "schemas" / "release-spec.schema.json").read_text()
    schema = json.loads(fresh)
    assert "apiVersion" in schema["properties"] and schema["additionalProperties"] is False
    assert ReleaseSpec.model_json_schema(by_alias=True)["required"] == ["apiVersion", "name", "model", "evals"]


def test_platform_policy_allows_the_demo_in_dev_and_is_stricter_in_prod() -> None:
    """GIVEN the committed policy WHEN checked THEN the demo passes dev and prod refuses a non-commercial licence."""
    policy = load_policy(REPO / "policy" / "platform-policy.yaml")
    demo = load_spec(str(REPO / "releases" / "demo.yaml"))
    for env in ("dev", "stage", "prod"):
        check_policy(policy, env, license=demo.model.card.license, model_name=demo.model.name)
        assert policy.environment(env).allow_pickle is False
    check_policy(policy, "dev", license="cc-by-nc-4.0", model_name="anything")
    with pytest.raises(PolicyError, match=r"environments\.prod\.licenses does not allow 'cc-by-nc-4\.0'"):
        check_policy(policy, "prod", license="cc-by-nc-4.0", model_name="demo-qa")


def test_malformed_policy_names_the_field(tmp_path: Path) -> None:
    """GIVEN a policy with an unknown rule WHEN loaded THEN the field path is named."""
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump({"version": "1", "environments": {"dev": {"licenses": ["mit"], "models": ["*"], "x": 1}}})
    )
    with pytest.raises(SpecError, match=r"p\.yaml: environments\.dev\.x: Extra inputs are not permitted"):
        load_policy(path)


def test_environment_floors_tighten_gates_but_never_loosen_them() -> None:
    """GIVEN the demo spec (min_score 0.5, attack 0.1, p95 1200) and the platform policy's prod floors
    WHEN it is applied for dev and for prod
    THEN dev keeps the spec's gates; prod gets min_score 0.6, attack 0.05 and p95 1000 (the stricter values),
    and a floor looser than the spec (prod cost 0.5 vs a spec of 0.2) leaves the spec's value."""
    from steps.release.policy import apply_environment

    spec = load_spec(str(REPO / "releases" / "demo.yaml"))
    strict = spec.model_copy(
        update={
            "gates": spec.gates.model_copy(
                update={"cost": spec.gates.cost.model_copy(update={"max_usd_per_1k_output_tokens": 0.2})}
            )
        }
    )

    dev, prod = apply_environment(strict, "dev").gates, apply_environment(strict, "prod").gates

    assert (dev.quality.min_score, dev.safety.max_attack_success_rate, dev.latency.p95_e2e_ms) == (0.5, 0.1, 1200)
    assert (prod.quality.min_score, prod.safety.max_attack_success_rate, prod.latency.p95_e2e_ms) == (0.6, 0.05, 1000)
    assert prod.cost.max_usd_per_1k_output_tokens == 0.2


def test_an_unknown_environment_is_refused_naming_the_defined_ones() -> None:
    """GIVEN an environment the policy does not define  WHEN applied  THEN one SpecError naming dev, stage, prod."""
    from registry.errors import SpecError
    from steps.release.policy import apply_environment

    with pytest.raises(SpecError, match=r"environment 'qa' is not defined \(defined: dev, stage, prod\)"):
        apply_environment(load_spec(str(REPO / "releases" / "demo.yaml")), "qa")
