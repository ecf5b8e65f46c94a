"""Where steps read and write the files they hand each other as Argo artifacts (paths inside the container).

On Argo each pod has its own filesystem and the artifact repository carries the files between pods; the local
runner maps these paths into a private folder per node and copies artifacts between them the same way.
"""

from __future__ import annotations

__all__ = [
    "ROOT",
    "ONBOARD_DIR",
    "RECORD_IN",
    "EVAL_DIR",
    "REPORT_OUT",
    "QUALITY_REPORT_IN",
    "SAFETY_REPORT_IN",
    "GATE_DIR",
    "GATE_REPORT_OUT",
    "LATENCY_DIR",
    "LATENCY_REPORT_OUT",
    "CANARY_DIR",
    "CANARY_LOG_OUT",
    "FINAL_INPUTS",
    "GLOBAL_REPORTS",
]

ROOT = "/tmp/llmrelease"
ONBOARD_DIR = f"{ROOT}/onboard"
RECORD_IN = f"{ROOT}/inputs/onboarding-record.json"
EVAL_DIR = f"{ROOT}/eval"
REPORT_OUT = EVAL_DIR + "/eval-report-{{inputs.parameters.kind}}.json"
QUALITY_REPORT_IN = f"{ROOT}/inputs/quality-report.json"
SAFETY_REPORT_IN = f"{ROOT}/inputs/safety-report.json"
GATE_DIR = f"{ROOT}/gate"
GATE_REPORT_OUT = f"{GATE_DIR}/gate-decision.json"
LATENCY_DIR = f"{ROOT}/latency"
LATENCY_REPORT_OUT = f"{LATENCY_DIR}/latency-report.json"
CANARY_DIR = f"{ROOT}/canary"
CANARY_LOG_OUT = f"{CANARY_DIR}/canary-log.json"
FINAL_INPUTS = f"{ROOT}/inputs/final"

# Reports exported as workflow-level artifacts (`globalName`), so the exit handler can gather whichever exist
# into the evidence bundle and the release report, whether the run succeeded or not.
GLOBAL_REPORTS = ("quality-report", "safety-report", "gate-report", "latency-report", "canary-log")
