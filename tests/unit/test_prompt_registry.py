"""The Prompt Registry facade on real MLflow stores (sqlite, one per test): digest idempotency, aliases, history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from registry.errors import IntegrityError, RegistryError
from registry.prompt_content import GenerationSettings, Message, PromptContent
from registry.prompts import PromptRegistry, RegisteredPrompt, prompt_uri
from registry.tags import DIGEST_TAG, PROMPT_MODEL_TAG, PROMPT_VARIABLES_TAG
from workflows.cli.main import main

NAME = "demo-qa-assistant"
V1 = PromptContent(
    name=NAME,
    template="You answer questions about {{topic}} in one short sentence.",
    variables={"topic": "geography"},
    generation=GenerationSettings(temperature=0.0, max_tokens=32, top_p=1.0, stop=["###"]),
)


def changed(**fields: object) -> PromptContent:
    """V1 with `fields` changed, validated (and so normalised) like a spec's prompt."""
    return PromptContent.model_validate({**V1.model_dump(), **fields})


class Store:
    """One test's MLflow store (sqlite under tmp_path) with the prompt facade and a raw client."""

    def __init__(self, root: Path) -> None:
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.prompts = PromptRegistry(self.client, tracking_uri=self.uri, clock=time.time_ns)

    def register(self, content: PromptContent, uid: str = "uid-1") -> RegisteredPrompt:
        return self.prompts.register(
            content, model_name="demo-qa", workflow_name="golden-delivery", workflow_uid=uid, git_commit="abc123"
        )


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would show up here
    return Store(tmp_path)


def test_the_same_text_twice_is_one_version_and_a_change_is_a_new_one(store: Store) -> None:
    """GIVEN an empty store  WHEN a prompt is registered twice (the second time ending in a CRLF newline, as a
    file from another editor) and then with one word changed  THEN the first two are version 1
    (reused, candidate moved once), the change is version 2 with candidate moved 1 -> 2, and each version holds
    the template, settings and tags MLflow's own tools read."""
    first = store.register(V1)
    again = store.register(changed(template=f"{V1.template}\r\n"), uid="uid-2")
    reworded = store.register(changed(template="You answer questions about {{topic}} briefly."))

    assert (first.version, first.created, again.version, again.created) == ("1", True, "1", False)
    assert (reworded.version, reworded.created) == ("2", True)
    assert reworded.digest != first.digest == again.digest == V1.digest
    assert [v.version for v in store.client.search_prompt_versions(NAME)] == [2, 1]
    loaded = store.client.load_prompt(prompt_uri(NAME, alias="candidate"), cache_ttl_seconds=0)
    assert loaded.version == 2 and loaded.format(topic="rivers") == "You answer questions about rivers briefly."
    one = store.client.get_prompt_version(NAME, 1)
    assert one.model_config == {"temperature": 0.0, "max_tokens": 32, "top_p": 1.0, "stop_sequences": ["###"]}
    assert one.tags[DIGEST_TAG] == V1.digest and one.tags[PROMPT_MODEL_TAG] == "demo-qa"
    assert one.tags[PROMPT_VARIABLES_TAG] == '{"topic": "geography"}'
    moves = store.prompts.history(NAME)
    assert [(m.alias, m.from_version, m.to_version, m.kind) for m in moves] == [
        ("candidate", None, "1", "prompt"),
        ("candidate", "1", "2", "prompt"),
    ]


def test_promotion_moves_champion_and_previous_as_for_models_and_loads_verify_the_digest(store: Store) -> None:
    """GIVEN versions 1 and 2  WHEN 1 is promoted, then 2, then 1 again (a rollback)  THEN champion and previous
    follow the models' rule, every move is in the history, each alias loads its own content (digest checked), and a
    second promotion of the champion moves nothing."""
    store.register(V1)
    v2 = changed(variables={"topic": "rivers"})
    store.register(v2)

    store.prompts.promote(NAME, "1", actor="alice", reason="first prompt")
    assert store.prompts.promote(NAME, "1", actor="alice", reason="again") == []
    store.prompts.promote(NAME, "2", actor="golden-delivery/uid-2", reason="gate passed", workflow_uid="uid-2")
    assert store.prompts.aliases(NAME) == {"candidate": "2", "champion": "2", "previous": "1"}
    assert store.prompts.load(NAME, alias="champion") == v2
    assert store.prompts.load(NAME, alias="previous") == V1
    store.prompts.promote(NAME, "1", actor="bob", reason="rollback")

    moves = [(m.alias, m.from_version, m.to_version, m.actor) for m in store.prompts.history(NAME)]
    assert moves[2:] == [
        ("champion", None, "1", "alice"),
        ("previous", None, "1", "golden-delivery/uid-2"),
        ("champion", "1", "2", "golden-delivery/uid-2"),
        ("previous", "1", "2", "bob"),
        ("champion", "2", "1", "bob"),
    ]
    assert store.prompts.history(NAME)[-2].reason == "champion before version 1: rollback"
    with pytest.raises(RegistryError, match=r"no such version"):
        store.prompts.move_alias(NAME, "champion", "9", actor="alice", reason="typo")
    assert store.prompts.remove_alias(NAME, "candidate", actor="alice", reason="abandoned") is not None
    assert store.prompts.get_alias(NAME, "candidate") is None


def test_a_tampered_version_and_a_model_name_clash_are_refused_in_one_line(store: Store) -> None:
    """GIVEN a registered prompt whose variables tag is then edited by hand, and a registered model `demo-qa`
    WHEN the prompt is loaded, and a prompt named `demo-qa` is registered  THEN the load names both digests and
    the clash says to rename the prompt; no prompt `demo-qa` exists."""
    store.register(V1)
    store.client.set_prompt_version_tag(NAME, "1", PROMPT_VARIABLES_TAG, '{"topic": "chemistry"}')
    with pytest.raises(IntegrityError) as tampered:
        store.prompts.load(NAME, version=1)
    assert "\n" not in str(tampered.value) and V1.digest[:19] in str(tampered.value)

    store.client.create_registered_model("demo-qa")
    with pytest.raises(RegistryError) as clash:
        store.register(V1.model_copy(update={"name": "demo-qa"}))
    assert "\n" not in str(clash.value) and "rename prompt.name" in str(clash.value)
    assert not store.prompts.exists("demo-qa") and store.prompts.exists(NAME)
    with pytest.raises(RegistryError, match="not found"):
        store.prompts.load("no-such-prompt", alias="champion")


def test_registry_history_shows_a_prompts_moves(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a prompt registered and promoted  WHEN `llmrelease registry history <prompt>` runs  THEN its table
    shows each move marked as a prompt's, and an unknown name still fails in one line."""
    store.register(V1)
    store.prompts.promote(NAME, "1", actor="alice", reason="first prompt")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)

    assert main(["registry", "history", NAME]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and "candidate (prompt)" in table[1] and "champion (prompt)" in table[2]
    assert "alice" in table[2] and "first prompt" in table[2]

    assert main(["registry", "history", "nothing-here"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing-here" in err


def test_a_chat_template_renders_with_values_over_defaults() -> None:
    """GIVEN a chat template with a defaulted and a required variable  WHEN rendered  THEN values win over defaults,
    a missing required value is one line naming it, and the digest ignores the name but not the text."""
    chat = PromptContent(
        name="p",
        template=[Message(role="system", content="Tone: {{tone}}."), Message(role="user", content="{{ question }}")],
        variables={"tone": "brief", "question": None},
    )
    assert [m.content for m in chat.render({"question": "Why?"})] == ["Tone: brief.", "Why?"]
    assert [m.content for m in chat.render({"question": "Why?", "tone": "warm"})] == ["Tone: warm.", "Why?"]
    assert [m.content for m in chat.render(strict=False)] == ["Tone: brief.", ""]
    with pytest.raises(Exception, match=r"variable 'question' has no value and no default") as info:
        chat.render()
    assert "\n" not in str(info.value)
    assert chat.model_copy(update={"name": "q"}).digest == chat.digest
    assert chat.used_variables() == ["tone", "question"]
