"""The `make demo` story on the production path, on one machine: every step an isolated pod, the spec from git,
the weights from S3, the services those of a cluster.

0. `llmrelease local up`: MLflow, S3 (moto), Prometheus + Pushgateway and the serving plane's service on
   127.0.0.1, and the two-node Ray cluster the eval pods join through Ray Client (RAY_ADDRESS=ray://...). The demo
   models are uploaded to s3://llmrelease-local/models/demo-qa/<name>/
   (`llmrelease local upload`), as a user uploads weights; the three demo specs, their `model.source` set to those
   URIs, are committed to a releases repository ($LLMRELEASE_HOME/local/releases-repo).
1. If `demo-qa` has no champion yet: golden-delivery on releases/demo-champion.yaml (a first release: nothing to
   compare with, 1 -> 100%, champion).
2. golden-delivery on releases/demo.yaml: the better candidate passes the gate and the latency SLO, goes
   1 -> 5 -> 25 -> 50 -> 100% behind HAProxy with a canary analysis at each step, and becomes champion.
3. golden-delivery on releases/demo-unsafe.yaml: stopped at the gate (reasons name the safety metric).
4. golden-delivery on releases/demo-prompt.yaml: a prompt-only release (the champion's weights with a system prompt,
   versioned in MLflow's Prompt Registry) passes the paired gate against the champion pair, canaries as
   `<version>.p<n>` and is promoted; the model's aliases do not move.
5. golden-delivery on releases/demo-prompt-unsafe.yaml: a "developer mode" system prompt (the candidate's planted
   flaw, see its MODEL_CARD.md) makes the model answer harmful requests: stopped at the gate on the attack success
   rate. For both prompt releases the demo prints the gate's checks (accuracy, safety rates, CIs).
6. The rollback template: it undoes the last move, the prompt's promotion: all traffic back on the champion's
   weights without a prompt, on the same hot server.
Every delivery is `llmrelease run <template> --isolation bwrap --cluster-config <profile> -p git-repo=<releases
repo> -p git-commit=<commit> -p release=...`: each pod sees only the steps image's files, a private /tmp and what
its template's ConfigMaps/Secrets give it. The demo prints what `local up` cost, each run's wall time and each
step's. The services stay up (the MLflow UI shows the runs); `llmrelease local down` stops them.

Options: `--isolation none` (no bubblewrap); `--no-ray` (no Ray cluster: each eval pod starts a Ray of its own;
a profile already running with Ray keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

MODEL = "demo-qa"
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RELEASES = {  # release file -> demo model folder (examples/models/<name>); None: a prompt-only release
    "releases/demo-champion.yaml": "champion",
    "releases/demo.yaml": "candidate",
    "releases/demo-unsafe.yaml": "candidate-unsafe",
    "releases/demo-prompt.yaml": None,
    "releases/demo-prompt-unsafe.yaml": None,
}
PROMPT = "demo-qa-assistant"  # the prompt name of releases/demo-prompt*.yaml


def llmrelease(*args: str, check: bool = True) -> int:
    """Run the real CLI, its output on this terminal; exit the demo when it fails and `check`."""
    print(f"\n$ llmrelease {' '.join(args)}", flush=True)
    code = subprocess.run([str(BIN / "llmrelease"), *args], cwd=REPO, check=False).returncode
    if check and code != 0:
        sys.exit(f"demo: `llmrelease {' '.join(args)}` exited {code}")
    return code


def alias(name: str) -> str | None:
    """The version `name` points at on the profile's MLflow (None when unset or the model is not registered)."""
    from registry import ModelRegistry

    return ModelRegistry.from_env().get_alias(MODEL, name)


def prompt_alias(name: str) -> str | None:
    """The version of the demo prompt that `name` points at (None when unset or the prompt is not registered)."""
    from registry.prompts import PromptRegistry
    from steps.core.tracking import mlflow_client

    try:
        return PromptRegistry(mlflow_client()).get_alias(PROMPT, name)
    except Exception:  # noqa: BLE001 - a demo's summary line: an unreadable alias prints as None
        return None


def prompt_releases(runs: Runs) -> None:
    """The two prompt-only releases on the champion's weights, each with what its gate decided and the figures."""
    from registry.tags import CHAMPION

    runs.deliver("prompt", "releases/demo-prompt.yaml")
    print(f"\ndemo: the prompt release passed and was promoted (prompt champion {prompt_alias(CHAMPION)}).")
    print(runs.gate("prompt"))
    runs.deliver("prompt-unsafe", "releases/demo-prompt-unsafe.yaml", expect_success=False)
    print(f"\ndemo: the developer-mode prompt was stopped (prompt champion stays {prompt_alias(CHAMPION)}).")
    print(runs.gate("prompt-unsafe"))


def prepare(home: Path) -> tuple[Path, str]:
    """Upload the demo models to the profile's S3 and commit the demo specs pointing at them; (repo, commit)."""
    from workflows.local.access import commit_releases, upload_model

    specs: dict[str, Any] = {}
    for release, folder in RELEASES.items():
        spec = yaml.safe_load((REPO / release).read_text(encoding="utf-8"))
        if folder is not None:  # prompt-only releases keep `source: champion`
            spec["model"]["source"] = upload_model(home, REPO / "examples" / "models" / folder, f"{MODEL}/{folder}")
            print(f"demo: {folder} uploaded to {spec['model']['source']}")
        specs[release] = spec
    repo = home / "local" / "releases-repo"
    commit = commit_releases(repo, specs)
    print(f"demo: releases repository {repo} at {commit[:12]}")
    return repo, commit


class Runs:
    """Runs the pipelines through the CLI with the profile's cluster config, and reads back their node times."""

    def __init__(self, home: Path, isolation: str, repo: Path, commit: str) -> None:
        """Run with `isolation`, the spec from `repo` at `commit`; runs recorded under `home/runs`."""
        self.runs_dir = home / "runs"
        config = home / "local" / "cluster-config"
        self.common = ["--isolation", isolation, "--cluster-config", str(config), "--runs-dir", str(self.runs_dir)]
        self.source = ["-p", f"git-repo={repo}", "-p", f"git-commit={commit}"]
        self.walls: dict[str, float] = {}
        self.steps: dict[str, list[tuple[str, float, str]]] = {}
        self.statuses: dict[str, Path] = {}

    def run(self, label: str, template: str, *params: str, expect_success: bool = True) -> None:
        """`llmrelease run template`; exits the demo when the outcome is not the expected one."""
        before = set(self.runs_dir.glob("*")) if self.runs_dir.is_dir() else set()
        start = time.monotonic()
        code = llmrelease("run", template, *self.common, *params, check=False)
        self.walls[label] = time.monotonic() - start
        new = sorted(set(self.runs_dir.glob("*")) - before, key=lambda p: p.stat().st_mtime)
        self.steps[label] = _step_times(new[-1] / "status.json") if new else []
        if new:
            self.statuses[label] = new[-1] / "status.json"
        if (code == 0) != expect_success:
            outcome = "succeeded" if code == 0 else "failed"
            sys.exit(f"demo: {template} for {label} {outcome}, which the demo did not expect")

    def deliver(self, label: str, release: str, *, expect_success: bool = True) -> None:
        """golden-delivery of `release` from the releases repository."""
        self.run(label, "golden-delivery", *self.source, "-p", f"release={release}", expect_success=expect_success)

    def gate(self, label: str) -> str:
        """What the gate of run `label` decided, with its checks' figures (the gate step's PASS/FAIL lines)."""
        try:
            nodes = json.loads(self.statuses[label].read_text(encoding="utf-8"))["status"]["nodes"].values()
        except (KeyError, OSError, ValueError):
            return "no gate result (the run left no status)"
        gates = [n for n in nodes if str(n.get("displayName", "")).split("(")[0] == "gate" and n.get("outputs")]
        if not gates:
            return "no gate result (the run stopped before the gate)"
        outputs = gates[-1]["outputs"]
        decision = next((p["value"] for p in outputs.get("parameters", []) if p["name"] == "decision"), "?")
        checks = [line for line in str(outputs.get("result", "")).splitlines() if line.startswith(("PASS ", "FAIL "))]
        return "\n".join([f"gate: {decision}", *(f"  {line}" for line in checks)])

    def report(self) -> None:
        """Each run's wall time and its steps' (pods only, in the order they started)."""
        for label, wall in self.walls.items():
            print(f"\ndemo: {label}: {wall:.1f}s wall")
            for name, seconds, phase in self.steps.get(label, []):
                print(f"  {name:<28} {seconds:6.0f}s  {phase}")


def _step_times(status_file: Path) -> list[tuple[str, float, str]]:
    """(step, seconds, phase) of every pod of a run (Argo's status times have a one-second resolution)."""
    try:
        nodes = json.loads(status_file.read_text(encoding="utf-8"))["status"]["nodes"].values()
    except (OSError, ValueError, KeyError):
        return []
    pods = [n for n in nodes if n.get("type") == "Pod" and n.get("startedAt") and n.get("finishedAt")]
    pods.sort(key=lambda n: n["startedAt"])
    return [(str(n["displayName"]), _seconds(n["startedAt"], n["finishedAt"]), str(n.get("phase"))) for n in pods]


def _seconds(start: str, end: str) -> float:
    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def main() -> None:
    """Bring the profile up, prepare models and specs, run the four pipelines, print the times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isolation", choices=("bwrap", "none"), default="bwrap")
    parser.add_argument("--no-ray", action="store_true", help="no Ray cluster: each eval pod runs its own Ray")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from registry.settings import llmrelease_home
    from registry.tags import CHAMPION
    from workflows.local.access import profile_env

    home = llmrelease_home().absolute()
    os.environ["LLMRELEASE_HOME"] = str(home)
    started = time.monotonic()
    llmrelease("local", "up", *(["--no-ray"] if args.no_ray else []))
    up_s = time.monotonic() - started
    os.environ.update(profile_env(home))  # this process and the host commands below reach the profile as pods do
    repo, commit = prepare(home)
    runs = Runs(home, args.isolation, repo, commit)
    if alias(CHAMPION) is None:
        runs.deliver("champion (seed)", "releases/demo-champion.yaml")
    seed = alias(CHAMPION)
    runs.deliver("candidate", "releases/demo.yaml")
    candidate = alias(CHAMPION)
    runs.deliver("candidate-unsafe", "releases/demo-unsafe.yaml", expect_success=False)
    prompt_releases(runs)
    llmrelease("serving", "status", MODEL)
    reason = "show the one-command rollback"
    runs.run("rollback", "rollback", "-p", f"model={MODEL}", "-p", "actor=demo", "-p", f"reason={reason}")
    llmrelease("serving", "status", MODEL)
    llmrelease("registry", "history", MODEL)
    llmrelease("registry", "history", PROMPT, check=False)
    llmrelease("serving", "stop", MODEL)
    print(
        f"\ndemo: the better candidate (version {candidate}) went 1 -> 100% and became champion (the seed champion "
        f"was {seed}); the unsafe candidate was stopped at the gate; the prompt release went 1 -> 100% on the same "
        f"weights and the unsafe prompt was stopped at the gate; the rollback template put the champion's weights "
        f"back without the prompt (champion version {alias(CHAMPION)}, prompt champion {prompt_alias(CHAMPION)})."
    )
    print(f"\ndemo: `llmrelease local up` took {up_s:.1f}s (services already running are kept)")
    runs.report()
    ui = os.environ.get("MLFLOW_TRACKING_URI", "")
    print(f"\ndemo: the services stay up (the MLflow UI: {ui}); stop them with `llmrelease local down`")


if __name__ == "__main__":
    main()
