"""Evals of (model, prompt) pairs: the result cache key, the prompts each side gets, how engines apply them.

Real MLflow prompt registries on sqlite (one per test) and the real result cache; no model is run here (the
integration test `tests/integration/test_prompt_release.py` runs the demo models).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from registry.prompt_content import GenerationSettings as PromptGeneration
from registry.prompt_content import PromptContent
from registry.prompts import PromptRegistry
from steps.evals.cache import GenerationSettings, ResultCache, cache_key
from steps.evals.engines.base import EvalError, chat_messages, prefixed_context
from steps.evals.prompt_pairs import release_prompts
from steps.evals.results import ExampleResult, SuiteResult
from steps.release.spec import ReleaseSpec, load_spec

TEMPLATE = "You answer questions about {{topic}} in one short sentence."
HELPFUL = PromptContent(
    name="demo-qa-assistant",
    template=TEMPLATE,
    variables={"topic": "geography"},
    generation=PromptGeneration(temperature=0.0, max_tokens=16),
)
TERSE = HELPFUL.model_copy(update={"template": "Answer."})
SPEC: dict[str, Any] = {
    "apiVersion": "llmrelease/v1",
    "name": "demo-prompt",
    "model": {"name": "demo-qa", "source": "champion", "card": {"license": "apache-2.0", "intended_use": "tests"}},
    "evals": {"suites": [{"name": "qa", "path": "qa.jsonl"}], "safety": {"name": "safety", "path": "s.jsonl"}},
    "prompt": {
        "name": "demo-qa-assistant",
        "template": TEMPLATE,
        "variables": {"topic": "geography"},
        "generation": {"temperature": 0.0, "max_tokens": 16},
    },
}


def spec(tmp_path: Path, **prompt: Any) -> ReleaseSpec:
    path = tmp_path / "releases" / "demo-prompt.yaml"
    path.parent.mkdir(exist_ok=True)
    data = {**SPEC, "prompt": {**SPEC["prompt"], **prompt}} if prompt else SPEC
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_spec(str(path))


@pytest.fixture
def prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PromptRegistry:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return PromptRegistry(MlflowClient(tracking_uri=uri, registry_uri=uri), tracking_uri=uri, clock=time.time_ns)


def register(prompts: PromptRegistry, content: PromptContent) -> str:
    return prompts.register(
        content, model_name="demo-qa", workflow_name="wf", workflow_uid="uid-1", git_commit="abc"
    ).version


def result(settings: GenerationSettings) -> SuiteResult:
    example = ExampleResult(
        suite="qa",
        id="q1",
        task="contains",
        prompt="q",
        output="a",
        score=1.0,
        passed=True,
        latency_ms=1.0,
        output_tokens=1,
    )
    return SuiteResult(
        suite="qa",
        suite_sha256="ab" * 32,
        model_name="demo-qa",
        model_version="1",
        model_digest="sha256:" + "cd" * 32,
        backend=settings.backend,
        generation=settings.as_json(),
        examples=[example],
    )


def test_no_prompt_keeps_todays_keys_and_each_prompt_digest_has_its_own(tmp_path: Path) -> None:
    """GIVEN the same model, suite and settings without a prompt, with one prompt and with another
    WHEN their cache keys are taken and results stored
    THEN without a prompt the key is the hash of the four settings as before prompts existed; each prompt digest
    gives another key; a result stored under one is a miss under the others (and an entry written before prompts,
    without the field, is still a hit)."""
    plain = GenerationSettings(max_new_tokens=32)
    before = {"backend": "transformers", "device": "cpu", "max_new_tokens": 32, "temperature": 0.0}
    expected = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert plain.digest() == expected
    helpful = plain.model_copy(update={"prompt_digest": HELPFUL.digest})
    terse = plain.model_copy(update={"prompt_digest": TERSE.digest})
    keys = {cache_key("sha256:" + "cd" * 32, "ab" * 32, s) for s in (plain, helpful, terse)}
    assert len(keys) == 3

    cache = ResultCache(tmp_path / "cache")
    cache.put(result(helpful))
    assert cache.get("sha256:" + "cd" * 32, "ab" * 32, helpful) == result(helpful)
    assert cache.get("sha256:" + "cd" * 32, "ab" * 32, terse) is None
    assert cache.get("sha256:" + "cd" * 32, "ab" * 32, plain) is None
    old = result(plain).model_copy(update={"generation": before})  # as written before prompts existed
    cache.put(old)
    assert cache.get("sha256:" + "cd" * 32, "ab" * 32, plain) == old


def test_engines_put_the_prompts_messages_before_every_item() -> None:
    """GIVEN a chat template of a system and an assistant message
    WHEN an item is formatted with and without it
    THEN the chat is the template's messages then the item as the user's; raw text puts their text first."""
    prefix = (("system", "Answer."), ("assistant", "Ready."))
    assert chat_messages((), "What is 2 plus 3?") == [{"role": "user", "content": "What is 2 plus 3?"}]
    assert chat_messages(prefix, "What is 2 plus 3?") == [
        {"role": "system", "content": "Answer."},
        {"role": "assistant", "content": "Ready."},
        {"role": "user", "content": "What is 2 plus 3?"},
    ]
    assert prefixed_context((), "Q: x") == "Q: x"
    assert prefixed_context(prefix, "Q: x") == "Answer.\n\nReady.\n\nQ: x"


def test_the_candidate_pair_gets_the_registered_prompt_and_the_champion_pair_the_champions(
    prompts: PromptRegistry, tmp_path: Path
) -> None:
    """GIVEN a terse prompt promoted to champion and this release's helpful prompt registered as candidate
    WHEN the pairs' prompts are resolved
    THEN the candidate's is the helpful version (its messages rendered with the defaults, its settings carrying
    its digest, temperature and shorter max_tokens) and the champion's the terse one; before any champion
    prompt, the champion pair has none; a spec without a prompt has none on either side."""
    first = register(prompts, TERSE)
    mine, theirs = release_prompts(spec(tmp_path, template="Answer."), prompts)
    assert mine is not None and mine.version == first and theirs is None
    prompts.promote(HELPFUL.name, first, actor="t", reason="first")
    second = register(prompts, HELPFUL)

    mine, theirs = release_prompts(spec(tmp_path), prompts)
    assert mine is not None and theirs is not None
    assert (mine.version, mine.digest) == (second, HELPFUL.digest)
    assert (theirs.version, theirs.digest) == (first, TERSE.digest)
    assert mine.messages == (("system", "You answer questions about geography in one short sentence."),)
    settings = mine.settings(GenerationSettings(max_new_tokens=32, temperature=0.5))
    assert (settings.prompt_digest, settings.temperature, settings.max_new_tokens) == (HELPFUL.digest, 0.0, 16)
    assert release_prompts(ReleaseSpec.model_validate({**SPEC, "prompt": None} | _weights()), prompts) == (
        None,
        None,
    )


def _weights() -> dict[str, Any]:
    return {"model": {**SPEC["model"], "source": "examples/models/candidate"}}


def test_an_unregistered_or_stale_candidate_prompt_is_one_line(prompts: PromptRegistry, tmp_path: Path) -> None:
    """GIVEN no registered prompt, then a candidate alias holding other text than the spec's
    WHEN the pairs' prompts are resolved
    THEN one EvalError line says to run (or re-run) the register step."""
    with pytest.raises(EvalError, match="has no 'candidate' alias: run the register step") as info:
        release_prompts(spec(tmp_path), prompts)
    assert "\n" not in str(info.value)
    register(prompts, TERSE)
    with pytest.raises(EvalError, match="not this release's prompt") as info:
        release_prompts(spec(tmp_path), prompts)
    assert "re-run register" in str(info.value)


def test_evidence_names_the_prompt_version_and_digest_and_diffs_it_against_the_champions(
    prompts: PromptRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN the terse prompt as champion and the helpful one registered by this release (then promoted)
    WHEN the evidence bundle of the run is written and its report rendered
    THEN the statement has a second subject `prompt:<name>` with the version and digest, externalParameters.prompt
    names the champion version compared with, and the report shows a unified diff of the two texts; after the
    promotion the comparison is with `previous`, the same terse version."""
    from steps.evidence import write_bundle
    from steps.evidence.prompt import collect_prompt
    from steps.evidence.report import render_report
    from tests.unit.test_evidence import REPO, run_inputs, write_run_files

    terse = register(prompts, TERSE)
    prompts.promote(HELPFUL.name, terse, actor="t", reason="first")
    helpful = register(prompts, HELPFUL)
    spec(tmp_path)
    release = str(tmp_path / "releases" / "demo-prompt.yaml")
    facts = collect_prompt(release, prompts)
    assert facts is not None
    assert (facts["version"], facts["digest"], facts["champion"]["version"]) == (helpful, HELPFUL.digest, terse)
    assert "-Answer.\n+You answer questions about {{topic}} in one short sentence.\n" in facts["diff"]
    prompts.promote(HELPFUL.name, helpful, actor="t", reason="canary completed")
    assert collect_prompt(release, prompts) == facts

    files = write_run_files(tmp_path / "run")
    monkeypatch.chdir(REPO)
    write_bundle(run_inputs(files, prompt=facts), tmp_path / "bundle")
    statement = json.loads((tmp_path / "bundle" / "statement.json").read_text())
    assert statement["subject"][1] == {
        "name": f"prompt:{HELPFUL.name}",
        "digest": {"sha256": HELPFUL.digest.removeprefix("sha256:")},
        "annotations": {"version": helpful, "uri": f"prompts:/{HELPFUL.name}/{helpful}"},
    }
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["prompt"]["champion"]["version"] == terse
    html = render_report(tmp_path / "bundle")
    assert f"prompts:/{HELPFUL.name}/{helpful}" in html and HELPFUL.digest in html
    assert "+You answer questions about {{topic}} in one short sentence." in html
    assert collect_prompt(str(tmp_path / "no-such.yaml"), prompts) is None
