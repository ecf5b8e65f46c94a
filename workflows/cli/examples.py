"""An example for every `llmrelease` command's `--help`, shown as its epilog (`add_examples` walks the parser).

Keyed by the command's words after `llmrelease`; a test checks that every command has one and none is stale.
"""

from __future__ import annotations

import argparse

__all__ = ["EXAMPLES", "add_examples", "commands"]

EXAMPLES: dict[str, str] = {
    "": "llmrelease registry history demo-qa\n"
    "  llmrelease completion bash > ~/.local/share/bash-completion/completions/llmrelease",
    "render": "llmrelease render            # write argo/\n"
    "  llmrelease render --check    # in CI: fail if argo/ is stale",
    "lint": "llmrelease lint argo/*.yaml\n  llmrelease lint --json argo/golden-delivery.yaml",
    "run": "llmrelease run golden-delivery -p release=releases/demo.yaml -p environment=dev --resume approval \\\n"
    "    --supply approval.approver=alice",
    "list": "llmrelease list\n  llmrelease list --json",
    "get": "llmrelease get golden-delivery-3f9a1\n  llmrelease get golden-delivery-3f9a1 --json",
    "resume": "llmrelease resume golden-delivery-3f9a1 --node approval --supply approver=alice",
    "stop": "llmrelease stop golden-delivery-3f9a1      # exit handlers run",
    "terminate": "llmrelease terminate golden-delivery-3f9a1 # no exit handlers",
    "registry": "llmrelease registry list",
    "registry list": "llmrelease registry list --json",
    "registry history": "llmrelease registry history demo-qa\n  llmrelease registry history demo-qa --json",
    "registry promote": "llmrelease registry promote demo-qa 3 --actor alice --reason 'hotfix verified'",
    "rollback": "llmrelease rollback demo-qa --actor alice --reason 'p99 latency doubled'",
    "rollout": "llmrelease rollout get demo-qa --env prod --watch",
    "rollout get": "llmrelease rollout get demo-qa --env prod --watch",
    "rollout promote": "llmrelease rollout promote demo-qa --env prod",
    "rollout abort": "llmrelease rollout abort demo-qa --actor alice --reason 'bad answers in canary'",
    "rollout undo": "llmrelease rollout undo demo-qa --actor alice --reason 'p99 latency doubled'",
    "rollout retry": "llmrelease rollout retry demo-qa --env prod",
    "canary": "llmrelease canary resume demo-qa --actor alice",
    "canary resume": "llmrelease canary resume demo-qa --actor alice",
    "canary abort": "llmrelease canary abort demo-qa --actor alice",
    "serving": "llmrelease serving status demo-qa",
    "serving status": "llmrelease serving status demo-qa\n  llmrelease serving status demo-qa --json",
    "serving stop": "llmrelease serving stop demo-qa",
    "submit": "ARGO_SERVER=argo.example.com:443 llmrelease submit golden-delivery -p release=releases/demo.yaml "
    "--watch",
    "cron": "llmrelease cron next nightly-regression",
    "cron next": "llmrelease cron next nightly-regression -n 3\n"
    "  llmrelease cron next nightly-regression --schedule '0 2 * * 1-5' --json",
    "webhook": "llmrelease webhook simulate push.json --signature sha256=... --dry-run",
    "webhook simulate": "GITHUB_WEBHOOK_SECRET=... llmrelease webhook simulate push.json --signature sha256=... "
    "--dry-run",
    "evidence": "llmrelease evidence show demo-qa 3",
    "evidence show": "llmrelease evidence show demo-qa 3\n  llmrelease evidence show demo-qa 3 --json",
    "evidence verify": "llmrelease evidence verify demo-qa 3 --public-key evidence.pem.pub\n"
    "  llmrelease evidence verify --dir .llmrelease/evidence/demo-qa/3/<uid> --json",
    "evidence keygen": "llmrelease evidence keygen ~/.config/llmrelease/evidence.pem",
    "report": "llmrelease report demo-qa 3 --out report.html",
    "status": "llmrelease status demo-qa\n  llmrelease status demo-qa --at 2026-11-23T12:00:00Z --json",
    "local": "llmrelease local up\n"
    "  llmrelease run golden-delivery --cluster-config .llmrelease/local/cluster-config -p release=...",
    "local up": "llmrelease local up\n  llmrelease local up --no-ray --port mlflow=5000",
    "local down": "llmrelease local down",
    "local status": "llmrelease local status\n  llmrelease local status --json",
    "local upload": "llmrelease local upload examples/models/candidate demo-qa/candidate",
    "local env": 'eval "$(llmrelease local env)"; llmrelease local env',
    "completion": "llmrelease completion bash > ~/.local/share/bash-completion/completions/llmrelease\n"
    "  llmrelease completion zsh > ~/.zfunc/_llmrelease",
}


def commands(parser: argparse.ArgumentParser, words: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser keyed by its words after `llmrelease` ("" is `llmrelease` itself)."""
    found = {words: parser}
    for action in parser._actions:  # argparse keeps subcommands here only
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(commands(sub, f"{words} {name}".strip()))
    return found


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Set each command's epilog to its example(s), keeping the layout; add `--debug` to every subcommand."""
    for words, command in commands(parser).items():
        example = EXAMPLES.get(words)
        if example:
            command.epilog = f"example:\n  {example}"
            command.formatter_class = argparse.RawDescriptionHelpFormatter
        if words:  # SUPPRESS: a subcommand's default must not undo `llmrelease --debug <command>`
            command.add_argument(
                "--debug",
                action="store_true",
                default=argparse.SUPPRESS,
                help="on an error, show the traceback too (or set LLMRELEASE_DEBUG=1)",
            )
