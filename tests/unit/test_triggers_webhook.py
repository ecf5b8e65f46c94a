"""The webhook simulation's parts: HMAC check, event data, the gjson subset, and the rendered Sensor's filters and
parameter mapping (read from argo/, as `llmrelease webhook simulate` reads them)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from registry.errors import SpecError, WorkflowError
from workflows.events.webhook import (
    Delivery,
    Ignored,
    WebhookRefused,
    claim_delivery,
    evaluate,
    event_data,
    gjson_get,
    load_trigger,
    past_delivery,
    resolve_workflow,
    verify_signature,
)

ARGO = Path(__file__).resolve().parents[2] / "argo"
SECRET = "s3cret"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
AFTER = "9f2c4e1b7a3d5c6e8f0a1b2c3d4e5f6a7b8c9d0e"
CLONE_URL = "https://github.com/llmrelease/llmrelease.git"


def push(
    ref: str = "refs/heads/main", modified: list[str] | None = None, added: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": AFTER,
        "deleted": False,
        "created": False,
        "repository": {"full_name": "llmrelease/llmrelease", "clone_url": CLONE_URL},
        "head_commit": {
            "id": AFTER,
            "added": added or [],
            "removed": [],
            "modified": ["README.md", "releases/demo.yaml"] if modified is None else modified,
        },
        **extra,
    }


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def data_of(payload: dict[str, Any], event: str = "push") -> dict[str, Any]:
    body = json.dumps(payload).encode()
    return event_data(Delivery(body=body, signature=sign(body), delivery_id=DELIVERY, event=event))


@pytest.fixture(scope="module")
def sensor() -> dict[str, Any]:
    return load_trigger(ARGO)[0]


def test_a_correct_signature_verifies_and_every_other_form_is_refused() -> None:
    """GIVEN a body signed with the secret WHEN verified THEN it passes; a tampered body, another secret, no
    signature, a SHA-1 signature or a malformed digest are each refused with one line saying nothing ran."""
    body = json.dumps(push()).encode()
    verify_signature(body, sign(body), SECRET)
    verify_signature(body, sign(body).upper().replace("SHA256=", "sha256="), SECRET)  # hex case does not matter
    for signature, body_seen, words in [
        (sign(body), body.replace(b"main", b"mains"), "does not match"),
        (sign(body, "other"), body, "does not match"),
        (None, body, "no X-Hub-Signature-256"),
        ("", body, "no X-Hub-Signature-256"),
        ("sha1=" + hashlib.sha1(body).hexdigest(), body, "not sha256="),
        ("sha256=xyz", body, "not sha256="),
    ]:
        with pytest.raises(WebhookRefused, match=words) as info:
            verify_signature(body_seen, signature, SECRET)
        assert "refused, nothing run" in str(info.value) and "\n" not in str(info.value)


def test_event_data_wraps_the_body_as_argo_events_does_and_rejects_malformed_bodies() -> None:
    """GIVEN deliveries WHEN turned into event data THEN the body carries X-GitHub-Event/X-GitHub-Delivery as the
    GitHub EventSource adds them; a non-JSON body, a JSON array and a bad delivery id are SpecErrors."""
    data = data_of(push())
    assert data["body"]["X-GitHub-Event"] == "push" and data["body"]["X-GitHub-Delivery"] == DELIVERY
    assert data["headers"]["X-Github-Delivery"] == [DELIVERY]
    for body, words in [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b"", "not valid JSON"),
    ]:
        with pytest.raises(SpecError, match=words):
            event_data(Delivery(body=body, signature=sign(body), delivery_id=DELIVERY))
    with pytest.raises(SpecError, match="delivery id"):
        event_data(Delivery(body=b"{}", signature=None, delivery_id="../../etc/passwd"))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("body.ref", (True, "refs/heads/main")),
        ("body.head_commit.modified.1", (True, "releases/demo.yaml")),
        ("body.head_commit.modified.#", (True, 2)),
        ("body.commits.#.id", (True, ["a", "b"])),
        ('body.commits.#(id=="b").n', (True, 2)),
        ("body.commits.#(n>0)#.id", (True, ["a", "b"])),
        ('body.head_commit.modified.#(%"releases/*.yaml")', (True, "releases/demo.yaml")),
        ('body.head_commit.modified.#(!%"releases/*")', (True, "README.md")),
        (
            '[body.head_commit.added,body.head_commit.modified]|@flatten|#(%"releases/*.yaml")',
            (True, "releases/new.yaml"),
        ),
        ("[body.head_commit.added,body.missing]|@flatten", (True, ["releases/new.yaml"])),
        ('[body.commits.#.files,body.none]|@flatten:{"deep":true}', (True, ["x", "y", "z"])),
        ("body.head_commit.modified|@reverse|0", (True, "releases/demo.yaml")),
        ("body.X-GitHub-Event", (True, "push")),
        ("body.nope", (False, None)),
        ('body.head_commit.modified.#(%"docs/*")', (False, None)),
        ("body.head_commit.modified.7", (False, None)),
    ],
)
def test_gjson_subset_follows_gjson(path: str, expected: tuple[bool, Any]) -> None:
    """GIVEN a push event WHEN gjson paths of the supported subset are read THEN they give gjson's results."""
    payload = push(
        added=["releases/new.yaml"],
        commits=[{"id": "a", "n": 1, "files": [["x"], "y"]}, {"id": "b", "n": 2, "files": ["z"]}],
    )
    assert gjson_get(data_of(payload), path) == expected


def test_gjson_outside_the_subset_is_refused_by_name() -> None:
    """GIVEN a modifier the simulation does not implement WHEN read THEN a WorkflowError names it."""
    with pytest.raises(WorkflowError, match="@pretty"):
        gjson_get({"a": [1]}, "a|@pretty")


def test_rendered_sensor_and_event_source_are_the_hardened_ones(sensor: dict[str, Any]) -> None:
    """GIVEN argo/ WHEN its Sensor and EventSource are loaded THEN the secret is required, HMAC comes from a
    Kubernetes Secret, and every string data filter is anchored."""
    _, source = load_trigger(ARGO)
    github = next(iter(source["spec"]["github"].values()))
    assert github["webhookSecret"] == {"name": "llmrelease-github-webhook", "key": "secret"}
    filters = sensor["spec"]["dependencies"][0]["filters"]["data"]
    strings = [v for f in filters if f["type"] == "string" for v in f["value"]]
    assert strings and all(v.startswith("^") and v.endswith("$") for v in strings)


def test_a_merge_to_main_touching_a_release_spec_submits_golden_delivery(sensor: dict[str, Any]) -> None:
    """GIVEN a push to main modifying releases/demo.yaml WHEN filtered and mapped THEN a Workflow from the
    golden-delivery template gets release=that file, git-commit=body.after, git-repo=the pushed repository's clone
    URL, no environment (the spec's own is used) and a name from the delivery id."""
    data = data_of(push())
    evaluate(sensor, data)
    workflow = resolve_workflow(sensor, data)
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "golden-delivery"}
    assert workflow["metadata"]["name"] == f"golden-delivery-{DELIVERY}"
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert params == {"release": "releases/demo.yaml", "git-commit": AFTER, "git-repo": CLONE_URL}
    added = data_of(push(modified=[], added=["releases/next.yaml"]))
    evaluate(sensor, added)
    assert resolve_workflow(sensor, added)["spec"]["arguments"]["parameters"][0]["value"] == "releases/next.yaml"


@pytest.mark.parametrize(
    ("payload", "event", "words"),
    [
        (push(ref="refs/heads/feature"), "push", "body.ref is 'refs/heads/feature'"),
        (push(ref="refs/heads/main-old"), "push", "body.ref is 'refs/heads/main-old'"),  # anchored
        (push(ref="refs/tags/main"), "push", "body.ref"),
        (push(modified=["README.md", "docs/releases/x.yaml"]), "push", "does not exist"),
        (push(modified=["releases/notes.md"]), "push", "does not exist"),
        (push(modified=["releases/../../etc/x.yaml"]), "push", "which does not match"),  # confined to releases/
        (push(modified=["releases/sub/x.yaml"]), "push", "which does not match"),
        (push(deleted=True), "push", "body.deleted"),
        (push(), "pull_request", "body.X-GitHub-Event is 'pull_request'"),
        ({"zen": "Keep it logically awesome.", "hook_id": 1}, "ping", "X-GitHub-Event"),
    ],
)
def test_events_the_sensor_does_not_pass_are_ignored_with_the_reason(
    sensor: dict[str, Any], payload: dict[str, Any], event: str, words: str
) -> None:
    """GIVEN a non-main ref, no change under releases/, a branch deletion, another event WHEN filtered THEN Ignored,
    naming the filter, the Sensor and the dependency."""
    with pytest.raises(Ignored, match=words) as info:
        evaluate(sensor, data_of(payload, event))
    assert "Sensor release-merge" in str(info.value)


def test_a_mapping_whose_key_is_missing_is_an_error(sensor: dict[str, Any]) -> None:
    """GIVEN a push that passes the filters but lacks body.after WHEN mapped THEN a SpecError names the key."""
    payload = push()
    del payload["after"]
    with pytest.raises(SpecError, match="body.after is missing"):
        resolve_workflow(sensor, data_of(payload))


def test_deliveries_are_claimed_once(tmp_path: Path) -> None:
    """GIVEN a delivery id WHEN claimed twice THEN the second claim fails and the first is remembered."""
    assert past_delivery(tmp_path, DELIVERY) is None
    assert claim_delivery(tmp_path, DELIVERY, "golden-delivery-x")
    assert not claim_delivery(tmp_path, DELIVERY, "golden-delivery-y")
    past = past_delivery(tmp_path, DELIVERY)
    assert past is not None and past["workflow"] == "golden-delivery-x"


def test_argo_dir_without_a_hardened_event_source_is_refused(tmp_path: Path) -> None:
    """GIVEN an argo dir whose GitHub EventSource lacks webhookSecret WHEN loaded THEN refused, naming why."""
    import yaml

    sensor, source = load_trigger(ARGO)
    del next(iter(source["spec"]["github"].values()))["webhookSecret"]
    (tmp_path / "es.yaml").write_text(yaml.safe_dump(source))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sensor))
    with pytest.raises(WorkflowError, match="skip the HMAC check"):
        load_trigger(tmp_path)
    with pytest.raises(WorkflowError, match="expected one Sensor"):
        load_trigger(tmp_path / "missing")


def test_lint_refuses_an_unhardened_event_source_or_sensor(tmp_path: Path) -> None:
    """GIVEN the rendered objects with the webhook secret removed, a filter unanchored and a trigger parameter
    naming an unknown dependency WHEN linted (as `llmrelease render` and `lint` do) THEN each is an error, and the
    rendered objects themselves lint clean."""
    from workflows.argo.hardening import lint_events
    from workflows.argo.lint import lint_document, lint_files

    sensor, source = load_trigger(ARGO)
    assert lint_events(sensor) == lint_events(source) == []
    assert lint_files([ARGO / "release-merge.sensor.yaml", ARGO / "llmrelease-github.eventsource.yaml"]) == []
    del next(iter(source["spec"]["github"].values()))["webhookSecret"]
    sensor["spec"]["dependencies"][0]["filters"]["data"][1]["value"] = ["refs/heads/main"]
    sensor["spec"]["triggers"][0]["template"]["argoWorkflow"]["parameters"][2]["src"]["dependencyName"] = "typo"
    messages = [str(p) for doc in (source, sensor) for p in lint_document("argo/x.yaml", doc)]
    assert len(messages) == 3
    assert (
        "EventSource/llmrelease-github: EventSource llmrelease-github: github.release-merge has no webhookSecret"
        in messages[0]
    )
    assert "data filter on body.ref value 'refs/heads/main' is not anchored" in messages[1]
    assert "names dependency 'typo', which the Sensor does not declare" in messages[2]
