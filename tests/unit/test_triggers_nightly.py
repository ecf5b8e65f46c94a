"""Nightly regression decisions (pure) and how champions and their release specs are found in the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from steps.evals.baseline import find_champions
from steps.evals.results import ExampleResult, SuiteResult
from steps.nightly_eval import compare_results


def suite(
    passed: list[bool], *, name: str = "golden-qa", sha: str = "a" * 64, task: str = "exact_match"
) -> SuiteResult:
    """A suite result with one item per flag (quality items score 1/0; refuse items refused when passed)."""
    examples = [
        ExampleResult(
            suite=name,
            id=f"q-{i:03d}",
            task=task,
            prompt="p",
            output="o",
            score=float(ok),
            passed=ok,
            latency_ms=1.0,
            output_tokens=1,
            refused=ok if task == "refuse" else None,
        )  # type: ignore[arg-type]
        for i, ok in enumerate(passed)
    ]
    return SuiteResult(
        suite=name,
        suite_sha256=sha,
        model_name="m",
        model_version="1",
        model_digest="sha256:" + "0" * 64,
        backend="transformers",
        examples=examples,
    )


def test_identical_results_are_no_regression() -> None:
    """GIVEN tonight equal to the baseline WHEN compared THEN one accuracy finding, diff 0, no regression."""
    base = suite([True] * 30 + [False] * 10)
    [finding] = compare_results([base], {"golden-qa": (base, "run-1")}, against="baseline", confidence=0.95)
    assert (finding.metric, finding.diff, finding.regression, finding.reference_run) == (
        "accuracy",
        0.0,
        False,
        "run-1",
    )
    assert "no significant regression" in finding.message


def test_a_clear_drop_is_a_significant_regression() -> None:
    """GIVEN 10 of 40 items that passed at promotion now failing WHEN compared THEN a regression: the CI excludes 0
    on the worse side and McNemar's p is below 0.05; the message shows values, CI and p."""
    base = suite([True] * 30 + [False] * 10)
    tonight = suite([False] * 10 + [True] * 20 + [False] * 10)
    [finding] = compare_results([tonight], {"golden-qa": (base, "r")}, against="baseline", confidence=0.95)
    assert finding.regression and finding.ci_high < 0
    assert finding.mcnemar_p is not None and finding.mcnemar_p < 0.05
    assert finding.message.startswith("golden-qa/accuracy 0.500 vs baseline 0.750 (n=40): diff -0.250")
    assert "McNemar p=" in finding.message and finding.message.endswith("significant regression")


def test_a_few_flips_are_noise_not_a_regression() -> None:
    """GIVEN 4 of 87 items flipped to failing (the bootstrap CI alone would call it significant) WHEN compared THEN
    no regression: McNemar's exact p (0.125) is not below 0.05, so a nightly false alarm is avoided."""
    base = suite([True] * 80 + [False] * 7)
    tonight = suite([False] * 4 + [True] * 76 + [False] * 7)
    [finding] = compare_results([tonight], {"golden-qa": (base, "r")}, against="baseline", confidence=0.95)
    assert finding.ci_high < 0  # the bootstrap CI excludes 0 ...
    assert finding.mcnemar_p == pytest.approx(0.125) and not finding.regression  # ... McNemar does not


def test_a_rise_in_attack_success_is_a_regression_of_a_lower_is_better_metric() -> None:
    """GIVEN harmful prompts refused at promotion and complied with tonight WHEN compared THEN attack_success_rate
    regressed."""
    base = suite([True] * 20, name="safety", task="refuse")
    tonight = suite([False] * 12 + [True] * 8, name="safety", task="refuse")
    [finding] = compare_results([tonight], {"safety": (base, "r")}, against="baseline", confidence=0.95)
    assert (finding.metric, finding.tonight, finding.reference, finding.regression) == (
        "attack_success_rate",
        0.6,
        0.0,
        True,
    )


def test_a_changed_suite_file_or_a_missing_reference_is_not_compared() -> None:
    """GIVEN a reference on another version of the suite file, or none WHEN compared THEN no finding."""
    tonight = suite([True] * 10)
    assert (
        compare_results(
            [tonight], {"golden-qa": (suite([True] * 10, sha="b" * 64), "r")}, against="previous", confidence=0.95
        )
        == []
    )
    assert compare_results([tonight], {}, against="previous", confidence=0.95) == []


def test_champions_are_found_with_the_release_spec_they_were_onboarded_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN three registered models, two with a champion alias WHEN champions are listed THEN those two, each with
    the spec_path its onboarding run logged; `only` narrows to one."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("llmrelease-onboarding", (tmp_path / "art").as_uri())
    for name, champion in (("alpha", True), ("beta", False), ("gamma", True)):
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "spec_path", f"releases/{name}.yaml")
        client.create_registered_model(name)
        for _ in range(2):
            client.create_model_version(name, (tmp_path / name).as_uri(), run_id=run.info.run_id)
        if champion:
            client.set_registered_model_alias(name, "champion", "2")
    found = find_champions(client)
    assert [(c.model_name, c.version, c.release) for c in found] == [
        ("alpha", "2", "releases/alpha.yaml"),
        ("gamma", "2", "releases/gamma.yaml"),
    ]
    assert [c.model_name for c in find_champions(client, "gamma")] == ["gamma"]
    assert find_champions(client, "beta") == []
