"""Which served version plays which role, and what a rollback undoes: real MLflow registries (sqlite, one per test)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from registry.facade import ModelRegistry
from registry.prompt_content import PromptContent
from registry.prompts import PromptRegistry
from registry.tags import CHAMPION, MODEL_PROMPT_TAG, PREVIOUS
from steps.rollout.served import champion_target, release_target, rollback_plan

MODEL, PROMPT = "demo-qa", "demo-qa-assistant"


class Store:
    """A model with versions 1..3 and a prompt registry on one sqlite store."""

    def __init__(self, root: Path) -> None:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.registry = ModelRegistry(self.client, tracking_uri=uri, artifact_root=root / "artifacts")
        self.prompts = PromptRegistry(self.client, tracking_uri=uri, clock=time.time_ns)
        self.client.create_registered_model(MODEL)
        for _ in range(3):
            self.client.create_model_version(MODEL, str(root / "weights"))

    def model_release(self, version: str, uid: str) -> None:
        self.registry.promote(MODEL, version, actor="t", reason="weights", workflow_uid=uid)

    def prompt_release(self, text: str, uid: str) -> str:
        content = PromptContent(name=PROMPT, template=text)
        version = self.prompts.register(content, model_name=MODEL, workflow_name="w", workflow_uid=uid, git_commit="c")
        self.registry.set_model_tag(MODEL, MODEL_PROMPT_TAG, PROMPT)
        self.prompts.promote(PROMPT, version.version, actor="t", reason="prompt", workflow_uid=uid)
        return version.version

    def plan(self) -> tuple[str, str, bool, str | None] | None:
        plan = rollback_plan(self.registry, lambda: self.prompts, MODEL)
        return None if plan is None else (plan.champion.served, plan.target.served, plan.model_back, plan.prompt)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)
    return Store(tmp_path)


def test_without_a_prompt_served_versions_are_model_versions(store: Store) -> None:
    store.model_release("1", "u1")
    store.model_release("2", "u2")
    target = champion_target(store.registry, lambda: pytest.fail("no prompt: the prompt registry is not read"), MODEL)
    assert target is not None and target.served == "2"
    assert store.plan() == ("2", "1", True, None)


def test_a_prompt_release_serves_the_champion_weights_with_the_candidate_prompt(store: Store) -> None:
    store.model_release("1", "u1")
    store.prompt_release("OK", "u2")
    content = PromptContent(name=PROMPT, template="Be brief.")
    store.prompts.register(content, model_name=MODEL, workflow_name="w", workflow_uid="u3", git_commit="c")
    champion = champion_target(store.registry, lambda: store.prompts, MODEL)
    candidate = release_target(store.registry, lambda: store.prompts, MODEL, "1", PROMPT)
    weights_only = release_target(store.registry, lambda: store.prompts, MODEL, "3", None)
    assert (champion and champion.served, candidate.served, weights_only.served) == ("1.p1", "1.p2", "3.p1")
    assert candidate.prompt is not None and candidate.prompt.messages == [("system", "Be brief.")]


def test_a_prompt_promoted_last_rolls_back_alone_and_only_once(store: Store) -> None:
    # GIVEN weights 1 then 2 released, then prompts 1 and 2 on weights 2
    store.model_release("1", "u1")
    store.model_release("2", "u2")
    store.prompt_release("OK", "u3")
    store.prompt_release(".", "u4")
    # THEN the rollback goes back to prompt 1 on the same weights, the model's aliases stay
    assert store.plan() == ("2.p2", "2.p1", False, PROMPT)
    store.prompts.rollback(PROMPT, actor="carol", reason="bad prompt")
    assert (store.prompts.get_alias(PROMPT, CHAMPION), store.prompts.get_alias(PROMPT, PREVIOUS)) == ("1", None)
    # AND a second rollback is refused (the prompt moved last and has no previous), as for models
    assert store.plan() is None


def test_weights_promoted_last_roll_back_with_the_prompt_in_production(store: Store) -> None:
    store.model_release("1", "u1")
    store.prompt_release("OK", "u2")
    store.prompt_release(".", "u3")
    store.model_release("2", "u4")
    assert store.plan() == ("2.p2", "1.p2", True, None)


def test_weights_and_prompt_promoted_by_one_workflow_roll_back_together(store: Store) -> None:
    store.model_release("1", "u1")
    store.prompt_release("OK", "u2")
    store.model_release("2", "u3")
    store.prompt_release(".", "u3")
    assert store.plan() == ("2.p2", "1.p1", True, PROMPT)


def test_a_models_first_prompt_rolls_back_to_no_prompt_on_the_same_weights_and_only_once(store: Store) -> None:
    # GIVEN weights 1 released without a prompt, then the model's first prompt promoted on them
    store.model_release("1", "u1")
    store.prompt_release("OK", "u2")
    # THEN the rollback serves weights 1 as before the prompt (no prompt), the model's aliases stay
    assert store.plan() == ("1.p1", "1", False, PROMPT)
    store.prompts.remove_alias(PROMPT, CHAMPION, actor="carol", reason="rolled back")
    # AND then there is nothing left to roll back to
    assert store.plan() is None
