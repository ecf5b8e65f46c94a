"""What a nightly run compares with, read from MLflow: champions, their promotion-time baseline, previous nights.

* `find_champions`: the registered models with a `champion` alias and the release spec each was onboarded from
  (the onboarding run's `spec_path` parameter, logged at registration);
* `find_references`: per suite of tonight's, the **baseline** (the version's own evaluation logged by batch-eval
  in `llmrelease-evals` before it was promoted, i.e. the evidence its promotion gate judged; for a suite whose file
  has changed since, or a version promoted without an evaluation, the first nightly run on the same suite file)
  and the **previous nightly run**, with notes on the spec, the promotion and the gate run it rested on.

The comparison and the verdict are in `steps.nightly`.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from registry.tags import (
    CHAMPION,
    EVAL_EXPERIMENT,
    EVAL_KIND_TAG,
    GATE_EXPERIMENT,
    GATE_TAG,
    MODEL_NAME_TAG,
    MODEL_VERSION_TAG,
)
from steps.evals.engines.base import EvalError
from steps.evals.results import EvalReport, SuiteResult

__all__ = ["Champion", "References", "find_champions", "find_references"]


@dataclass(frozen=True)
class References:
    """What tonight's suite results are compared with (suite -> (result, MLflow run id)), and how they were found."""

    baseline: dict[str, tuple[SuiteResult, str]]
    previous: dict[str, tuple[SuiteResult, str]]
    nightly: list[Any]  # the version's earlier nightly runs, oldest first
    notes: list[str]


class Champion(BaseModel):
    """A registered model's champion version and the release spec it was onboarded from ("" if unknown)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: str
    release: str


def find_champions(client: Any, only: str = "") -> list[Champion]:
    """Every registered model (or only `only`) with a champion alias, with the spec it was onboarded from."""
    found: list[Champion] = []
    token: str | None = None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        for model in page:
            version = (model.aliases or {}).get(CHAMPION)
            if version is None or (only and model.name != only):
                continue
            params = _onboarding_params(client, model.name, str(version))
            found.append(
                Champion(
                    model_name=model.name,
                    version=str(version),
                    release=params.get("spec_path", ""),
                )
            )
        token = getattr(page, "token", None)
        if not token:
            return sorted(found, key=lambda c: c.model_name)


def find_references(
    client: Any,
    registry: Any,
    name: str,
    version: str,
    *,
    tonight: list[SuiteResult],
    spec_path: Path,
    nightly_experiment: str,
) -> References:
    """The baseline and the previous night of each of tonight's suites, the nightly runs so far, and notes.

    Raises:
        EvalError: A baseline report cannot be read.
        RegistryError: The registry cannot be read.
    """
    notes = _spec_notes(client, name, version, spec_path)
    promoted = _promoted_at(registry, name, version)
    notes += _gate_note(client, name, version, promoted)
    nightly = _runs(client, nightly_experiment, name, version)
    baseline = _pick(tonight, _promotion_reports(client, name, version, promoted))
    if len(baseline) < len(tonight):  # suites changed since the promotion: the first nightly run on them
        baseline = {**_pick(tonight, _reports(client, nightly)), **baseline}
    previous = _pick(tonight, _reports(client, nightly[-1:]))
    for result in tonight:
        if result.suite not in baseline:
            notes.append(f"{result.suite}: no baseline on this suite file yet: tonight's result becomes it")
    return References(baseline=baseline, previous=previous, nightly=nightly, notes=notes)


def _onboarding_params(client: Any, name: str, version: str) -> dict[str, str]:
    """The parameters of the run that registered this model version ({} if none is recorded)."""
    run_id = client.get_model_version(name, version).run_id
    return dict(client.get_run(run_id).data.params) if run_id else {}


def _spec_notes(client: Any, name: str, version: str, path: Path) -> list[str]:
    """A note when the release spec at `path` changed since the version was onboarded."""
    recorded = _onboarding_params(client, name, version).get("spec_sha256", "")
    current = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    if recorded and current and recorded != current:
        return [f"{path} changed since version {version} was onboarded: its current suites are used"]
    return []


def _promoted_at(registry: Any, name: str, version: str) -> datetime | None:
    """When the version last became champion (None if the registry history never shows it)."""
    moves = [m for m in registry.history(name) if m.alias == CHAMPION and m.to_version == version]
    return moves[-1].when if moves else None


def _gate_note(client: Any, name: str, version: str, promoted: datetime | None) -> list[str]:
    """Which gate decision the promotion rested on (the last pass before it), for the record."""
    cutoff = promoted.timestamp() * 1000 if promoted else float("inf")
    runs = [
        r
        for r in _runs(client, GATE_EXPERIMENT, name, version, f" and tags.`{GATE_TAG}` = 'pass'")
        if r.info.start_time <= cutoff
    ]
    when = f"promoted {promoted:%Y-%m-%d %H:%M} UTC" if promoted else "never promoted through the registry history"
    gate = f"after gate run {runs[-1].info.run_id} passed" if runs else "with no passing gate run on record"
    return [f"{name} version {version}: {when}, {gate}"]


def _runs(client: Any, experiment: str, name: str, version: str, extra: str = "") -> list[Any]:
    """Runs of `experiment` tagged with this model version, oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = f"tags.`{MODEL_NAME_TAG}` = '{name}' and tags.`{MODEL_VERSION_TAG}` = '{version}'" + extra
    runs = client.search_runs([exp.experiment_id], query, max_results=1000, order_by=["attributes.start_time ASC"])
    return list(runs)


def _promotion_reports(client: Any, name: str, version: str, promoted: datetime | None) -> list[tuple[str, EvalReport]]:
    """Per eval kind, the version's last evaluation before its promotion (else its first), as logged by batch-eval."""
    chosen = []
    for kind in ("quality", "safety"):
        runs = _runs(client, EVAL_EXPERIMENT, name, version, f" and tags.`{EVAL_KIND_TAG}` = '{kind}'")
        cutoff = promoted.timestamp() * 1000 if promoted else float("inf")
        before = [r for r in runs if r.info.start_time <= cutoff]
        chosen += before[-1:] or runs[:1]
    return _reports(client, chosen)


def _reports(client: Any, runs: list[Any]) -> list[tuple[str, EvalReport]]:
    """(run id, report) for each run's `report/*.json` artifacts.

    Raises:
        EvalError: A run's report cannot be downloaded.
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="llmrelease-nightly-") as tmp:
        for run in runs:
            try:
                folder = Path(client.download_artifacts(run.info.run_id, "report", str(Path(tmp) / run.info.run_id)))
            except Exception as e:
                raise EvalError(
                    f"cannot download the report of MLflow run {run.info.run_id} ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}): check the artifact store"
                ) from e
            out += [(str(run.info.run_id), EvalReport.load(p)) for p in sorted(folder.glob("*.json"))]
    return out


def _pick(tonight: list[SuiteResult], reports: list[tuple[str, EvalReport]]) -> dict[str, tuple[SuiteResult, str]]:
    """Per suite of tonight's, the first candidate result in `reports` on the same suite file."""
    picked: dict[str, tuple[SuiteResult, str]] = {}
    for result in tonight:
        for run_id, report in reports:
            match = next(
                (r for r in report.candidate if r.suite == result.suite and r.suite_sha256 == result.suite_sha256), None
            )
            if match is not None:
                picked[result.suite] = (match, run_id)
                break
    return picked
