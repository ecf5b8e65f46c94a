"""No secret value is committed under argo/, infrastructure/ or images/: only references to Secrets.

The scanner flags, naming file:line and the rule:
- AWS access key ids (AKIA/ASIA...), private key blocks, well-known token formats (GitHub, Slack, OpenAI-style);
- a literal value in a field whose name says it holds a secret (password, secret, token, api key, webhook secret,
  client secret, private key, secret access key), in YAML (parsed, so line numbers are exact), JSON, HCL or any text;
- an env entry whose name says secret (DB_PASSWORD, GITHUB_TOKEN, ...) with a literal `value` instead of
  `valueFrom.secretKeyRef`;
- a high-entropy literal in a field named `*key` (a pasted credential rather than a key name or a path).
References are fine: `${VAR}`, `$(VAR)`, `{{...}}`, HCL expressions (`random_password.x.result`), `<placeholder>`.
The planted-secret tests prove each rule fires, so the repository scan cannot pass vacuously.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("argo", "infrastructure", "images")
_SECRET_FIELD = re.compile(
    r"(password|passwd|secret|token|api_?key|secret_?access_?key|private_?key|client_?secret|webhook_?secret)$"
)
_REFERENCE = re.compile(r"^(\$\{.*\}|\$\(.*\)|\{\{.*\}\}|<[^>]*>|)$")
_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
    "API key (sk-...)": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
}
# `field: "literal"` / `field = "literal"` / `"field": "literal"` on one line (JSON, HCL, text).
_ASSIGNMENT = re.compile(r"""["']?([A-Za-z][A-Za-z0-9_.-]*)["']?\s*[:=]\s*["']([^"']*)["']""")


@dataclass(frozen=True)
class Finding:
    """One suspected secret."""

    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}"


def _field(name: str) -> str:
    return re.sub(r"[-.\s]", "_", name).lower().replace("__", "_")


def _is_secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.search(_field(name))) or bool(_SECRET_FIELD.search(_field(name).replace("_", "")))


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _high_entropy(value: str) -> bool:
    """A credential-like token: long, one charset run, mixed case and digits (not a path or a name), random."""
    if len(value) < 20 or re.fullmatch(r"[A-Za-z0-9+/=_-]+", value) is None:
        return False
    mixed = all(re.search(p, value) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return mixed and _entropy(value) >= 4.0


def _literal(value: str) -> bool:
    return not _REFERENCE.match(value.strip())


def _field_rules(name: str, value: str) -> str | None:
    if _is_secret_field(name) and _literal(value):
        return f"literal value in secret field {name!r}: reference a Secret instead"
    if _field(name).endswith("key") and _high_entropy(value):
        return f"high-entropy literal in {name!r}: looks like a credential"
    return None


def _scan_yaml_node(node: yaml.Node, path: str, out: list[Finding]) -> None:
    if isinstance(node, yaml.MappingNode):
        pairs = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        name, value = pairs.get("name"), pairs.get("value")
        if isinstance(name, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode) and value.tag.endswith(":str"):
            if _is_secret_field(str(name.value)) and _literal(str(value.value)):
                out.append(Finding(path, value.start_mark.line + 1, f"env {name.value} has a literal value: use "
                                   "valueFrom.secretKeyRef"))  # fmt: skip
        for key, child in node.value:
            if isinstance(key, yaml.ScalarNode) and isinstance(child, yaml.ScalarNode) and child.tag.endswith(":str"):
                rule = _field_rules(str(key.value), str(child.value))
                if rule:
                    out.append(Finding(path, child.start_mark.line + 1, rule))
            _scan_yaml_node(child, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _scan_yaml_node(child, path, out)


def scan_text(path: str, text: str) -> list[Finding]:
    """Every suspected secret of one file's text (YAML files are also parsed, for exact field/value pairs)."""
    out: list[Finding] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        out += [Finding(path, number, rule) for rule, pattern in _PATTERNS.items() if pattern.search(line)]
        if path.endswith((".yaml", ".yml")):
            continue
        for name, value in _ASSIGNMENT.findall(line):
            rule = _field_rules(name, value)
            if rule:
                out.append(Finding(path, number, rule))
    if path.endswith((".yaml", ".yml")):
        try:
            for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
                if document is not None:
                    _scan_yaml_node(document, path, out)
        except yaml.YAMLError as e:  # not YAML after all (e.g. a ${...} template with odd syntax): lines only
            out.append(Finding(path, 1, f"unparseable YAML, scanned line by line only ({type(e).__name__})"))
    return sorted(set(out), key=lambda f: (f.path, f.line, f.rule))


def scan_tree(root: Path, folders: tuple[str, ...] = SCANNED) -> list[Finding]:
    """Scan every text file under `folders` of `root`."""
    out: list[Finding] = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # binary: nothing a person pasted
                continue
            out += scan_text(str(path.relative_to(root)), text)
    return out


def test_repository_has_no_secret_values() -> None:
    """GIVEN every file under argo/, infrastructure/ and images/
    WHEN the scanner reads them
    THEN it finds no secret value (each finding would name file:line and why)."""
    assert (ROOT / "infrastructure").is_dir() and (ROOT / "argo").is_dir()
    findings = scan_tree(ROOT)
    assert not findings, "secrets committed (move them to a Secret / ExternalSecret):\n" + "\n".join(map(str, findings))


_AWS = "AKIA" + "ZQ3" * 5 + "X"  # built here so no scanner flags this test file itself
_ENTROPIC = "q8ZrXw2Lp9Vt" + "Nf4KdJ7mB3cY6hT1sR5u"
PLANTED = [
    ("config.yaml", f"aws:\n  accessKeyId: {_AWS}\n", 2, "AWS access key id"),
    ("key.pem", "x\n-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE\n", 2, "private key block"),
    ("values.yaml", "db:\n  host: pg\n  password: hunter2-not-a-ref\n", 3, "secret field 'password'"),
    ("deploy.yaml", "env:\n  - name: GITHUB_TOKEN\n    value: abc123\n", 3, "env GITHUB_TOKEN has a literal"),
    ("es.yaml", "github:\n  webhookSecret: s3cr3t\n", 2, "secret field 'webhookSecret'"),
    ("main.tf", 'resource "x" "y" {\n  password = "hunter2"\n}\n', 2, "secret field 'password'"),
    ("schema.json", '{\n "token": "abcdef"\n}\n', 2, "secret field 'token'"),
    ("s3.yaml", f"s3:\n  accessKey: {_ENTROPIC}\n", 2, "high-entropy literal in 'accessKey'"),
    ("Dockerfile", "FROM x:1\nENV OPENAI_API_KEY=sk-" + "a1B2" * 6 + "\n", 2, "API key (sk-...)"),
]


@pytest.mark.parametrize(("name", "text", "line", "rule"), PLANTED, ids=[p[0] for p in PLANTED])
def test_scanner_catches_a_planted_secret(tmp_path: Path, name: str, text: str, line: int, rule: str) -> None:
    """GIVEN a file with one planted secret, in a scanned folder of a temporary tree
    WHEN the tree is scanned
    THEN the finding names the file, the line and the rule."""
    folder = tmp_path / "infrastructure"
    folder.mkdir()
    (folder / name).write_text(text, encoding="utf-8")
    findings = scan_tree(tmp_path)
    assert any(f.path == f"infrastructure/{name}" and f.line == line and rule in f.rule for f in findings), findings


@pytest.mark.parametrize(
    "text",
    [
        "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef: {name: mlflow-db, key: password}\n",
        "data:\n  - secretKey: password\n    remoteRef: {key: llmrelease/dev/mlflow-db, property: password}\n",
        "webhookSecret:\n  name: llmrelease-github-webhook\n  key: secret\n",
        "password: ${DB_PASSWORD}\ntoken: '{{workflow.parameters.token}}'\nsecret: <from Secrets Manager>\n",
        'resource "aws_db_instance" "x" {\n  password = random_password.mlflow_db.result\n}\n',
        "images:\n  - name: ghcr.io/llmrelease/steps\n    newTag: '0.1.0'\n",
    ],
)
def test_scanner_accepts_references(tmp_path: Path, text: str) -> None:
    """GIVEN a file that only references secrets (secretKeyRef, ExternalSecret keys, placeholders, HCL expressions)
    WHEN it is scanned
    THEN nothing is flagged."""
    assert scan_text("infrastructure/ok.yaml" if "{" not in text[:20] else "infrastructure/ok.tf", text) == []
