"""Hostile webhook deliveries: release paths outside releases/, over-size bodies, deeply nested JSON.

Each is refused in one line, by the rendered Sensor (read from argo/, as `llmrelease webhook simulate` reads it),
by the EventSource's size limit (read before anything is parsed, never the whole body) or by the JSON depth check
(no recursion), and the release-spec step refuses the same paths the Sensor does.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from registry.errors import SpecError, WorkflowError
from steps.release.spec import resolve_spec_path
from workflows.cli.main import main
from workflows.events.webhook import (
    ARGO_EVENTS_MAX_PAYLOAD,
    MAX_DEPTH,
    Delivery,
    Ignored,
    WebhookRefused,
    evaluate,
    event_data,
    load_trigger,
    parse_body,
    payload_limit,
    read_body,
    resolve_workflow,
)
from workflows.pipelines.git_webhook import MAX_PAYLOAD_BYTES

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "argo"
SECRET = "s3cret"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
MIB = 1024 * 1024
# The CLI, then its peak RSS in KiB: VmHWM belongs to this program's memory (ru_maxrss would count the forking
# parent's pages too).
RSS_OF_MAIN = """
import re, sys
from pathlib import Path
from workflows.cli.main import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
sys.exit(code)
"""


def push(*changed: str) -> dict[str, Any]:
    return {
        "ref": "refs/heads/main",
        "after": "9f2c4e1b7a3d5c6e8f0a1b2c3d4e5f6a7b8c9d0e",
        "deleted": False,
        "repository": {"clone_url": "https://github.com/acme/releases.git"},
        "head_commit": {"added": [], "removed": [], "modified": ["README.md", *changed]},
    }


def data_of(payload: dict[str, Any]) -> dict[str, Any]:
    return event_data(Delivery(body=json.dumps(payload).encode(), signature=None, delivery_id=DELIVERY))


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def nested(depth: int) -> bytes:
    """A JSON object `depth` levels deep: objects and arrays alternating, a string full of brackets inside."""
    opens = "".join('{"a":' if i % 2 == 0 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return (opens + json.dumps('[[{ "\\" ]]') + closes).encode()


@pytest.fixture(scope="module")
def rendered() -> tuple[dict[str, Any], dict[str, Any]]:
    return load_trigger(ARGO)


# ---- release paths: the Sensor and the step agree -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "releases/../../x.yaml",
        "releases/../releases/demo.yaml",
        "releases/sub/x.yaml",
        "releases/-rf.yaml",
        "releases/X.yaml",
        "releases/a_b.yaml",
        "releases/.yaml",
        "releases/x.yaml/../../y.yaml",
        f"releases/{'a' * 64}.yaml",
    ],
)
def test_the_sensor_ignores_a_release_path_outside_releases_and_the_step_refuses_it(
    rendered: tuple[dict[str, Any], dict[str, Any]], path: str
) -> None:
    """GIVEN a signed push to main whose changed release file is not releases/<label>.yaml WHEN the rendered
    Sensor filters it THEN it is ignored, naming the filter; and the spec step refuses the same path."""
    sensor, _ = rendered
    with pytest.raises(Ignored, match="does not match") as info:
        evaluate(sensor, data_of(push(path)))
    assert "Sensor release-merge" in str(info.value)
    with pytest.raises(SpecError, match="outside the releases directory"):
        resolve_spec_path(path)


@pytest.mark.parametrize("path", ["releases/demo.yaml", "releases/demo-qa-2.yaml", f"releases/{'a' * 63}.yaml"])
def test_the_sensor_passes_a_release_path_the_step_accepts(
    rendered: tuple[dict[str, Any], dict[str, Any]], path: str
) -> None:
    """GIVEN a push changing releases/<label>.yaml WHEN filtered and mapped THEN the workflow gets that path, which
    the spec step resolves unchanged."""
    sensor, _ = rendered
    data = data_of(push(path))
    evaluate(sensor, data)
    release = resolve_workflow(sensor, data)["spec"]["arguments"]["parameters"][0]["value"]
    assert release == path and resolve_spec_path(release) == Path(path)


# ---- body size ----------------------------------------------------------------------------------------------------


def test_the_event_source_limit_is_rendered_and_read_back(rendered: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """GIVEN argo/ WHEN the EventSource's limit is read THEN it is 25 MiB (GitHub's cap, above Argo Events' 1 MiB
    default); an EventSource without one gets Argo Events' default; a bad value is refused by name."""
    _, source = rendered
    assert payload_limit(source) == MAX_PAYLOAD_BYTES == 25 * MIB
    assert payload_limit({"spec": {"github": {"e": {"webhook": {}}}}}) == ARGO_EVENTS_MAX_PAYLOAD == MIB
    with pytest.raises(WorkflowError, match="maxPayloadSize '25MB' is not a positive number"):
        payload_limit({"metadata": {"name": "s"}, "spec": {"github": {"e": {"webhook": {"maxPayloadSize": "25MB"}}}}})


def test_a_body_at_the_limit_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    """GIVEN files of exactly the limit and one byte more WHEN read THEN the first is returned whole, the second
    refused in one line naming the limit."""
    at, over = tmp_path / "at.json", tmp_path / "over.json"
    at.write_bytes(b"x" * 1000)
    over.write_bytes(b"x" * 1001)
    assert read_body(at, 1000) == b"x" * 1000
    with pytest.raises(WebhookRefused, match="larger than 1000 bytes") as info:
        read_body(over, 1000)
    assert "\n" not in str(info.value) and "refused, nothing run" in str(info.value)
    with pytest.raises(SpecError, match="cannot read it"):
        read_body(tmp_path / "missing.json", 1000)


def test_an_endless_stream_is_refused_after_reading_at_most_the_limit(tmp_path: Path) -> None:
    """GIVEN /dev/zero (a body that never ends, with no size to ask) WHEN read THEN refused after limit + 1 bytes:
    the reader never tries to hold the whole body."""

    class Counted(io.RawIOBase):
        """/dev/zero, counting what is read from it."""

        def __init__(self) -> None:
            self.raw, self.consumed = open("/dev/zero", "rb", buffering=0), 0  # noqa: SIM115

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = self.raw.readinto(buffer) or 0
            self.consumed += n
            return n

        def close(self) -> None:
            self.raw.close()
            super().close()

    with Counted() as endless:
        with pytest.raises(WebhookRefused, match=f"larger than {4 * MIB} bytes"):
            read_body(endless, 4 * MIB)  # type: ignore[arg-type]
        assert endless.consumed == 4 * MIB + 1


def test_simulate_refuses_a_200_mb_body_without_reading_it(tmp_path: Path) -> None:
    """GIVEN a 200 MB payload (sparse) WHEN `llmrelease webhook simulate` gets it THEN exit 1 with one stderr line,
    and the process's peak RSS stays far below the body's size (measured: ~35 MB, as for a 3-byte body)."""
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(200 * 1000 * 1000)
    args = ["webhook", "simulate", str(big), "--signature", "sha256=0", "--argo-dir", str(ARGO), "--dry-run"]
    done = subprocess.run(
        [sys.executable, "-c", RSS_OF_MAIN, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"GITHUB_WEBHOOK_SECRET": SECRET, "PATH": "/usr/bin"},
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and f"larger than {MAX_PAYLOAD_BYTES} bytes" in done.stderr
    peak_kib = int(done.stdout.split()[-1])
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB for a refused 200 MB body"


# ---- JSON depth ---------------------------------------------------------------------------------------------------


def test_nesting_up_to_the_limit_parses_and_one_level_more_is_refused() -> None:
    """GIVEN bodies nested MAX_DEPTH and MAX_DEPTH + 1 levels (brackets and escaped quotes inside strings do not
    count) WHEN parsed THEN the first parses, the second is refused in one line."""
    assert MAX_DEPTH == 64
    assert isinstance(parse_body(nested(MAX_DEPTH)), dict)
    with pytest.raises(SpecError, match="deeper than 64 levels") as info:
        parse_body(nested(MAX_DEPTH + 1))
    assert "\n" not in str(info.value)
    flat = {"k": '[[[[{"' * 200, "l": [["\\"]] * 3}
    assert parse_body(json.dumps(flat).encode()) == flat


@pytest.mark.parametrize("depth", [1_000, 100_000, 5_000_000])
def test_a_deeply_nested_signed_body_is_one_line_not_a_recursion_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    """GIVEN a correctly signed body nested `depth` levels WHEN simulated THEN exit 2 with one stderr line (before,
    json.loads raised RecursionError: a traceback)."""
    body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    path = tmp_path / "deep.json"
    path.write_bytes(body)
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("LLMRELEASE_HOME", str(tmp_path / "home"))
    code = main(["webhook", "simulate", str(path), "--signature", sign(body), "--argo-dir", str(ARGO), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and "deeper than 64 levels" in err
    assert not (tmp_path / "home" / "webhook-deliveries").exists()
