"""Where steps read and write the files they hand each other as Argo artifacts (paths inside the container).

On Argo each pod has its own filesystem and the artifact repository carries the files between pods; the local
runner maps these paths into a private folder per node and copies artifacts between them the same way.
"""

from __future__ import annotations

__all__ = ["ROOT", "ONBOARD_DIR", "RECORD_IN", "EVAL_DIR", "REPORT_OUT", "QUALITY_REPORT_IN", "SAFETY_REPORT_IN",
           "GATE_DIR"]

ROOT = "/tmp/llmrelease"
ONBOARD_DIR = f"{ROOT}/onboard"
RECORD_IN = f"{ROOT}/inputs/onboarding-record.json"
EVAL_DIR = f"{ROOT}/eval"
REPORT_OUT = EVAL_DIR + "/eval-report-{{inputs.parameters.kind}}.json"
QUALITY_REPORT_IN = f"{ROOT}/inputs/quality-report.json"
SAFETY_REPORT_IN = f"{ROOT}/inputs/safety-report.json"
GATE_DIR = f"{ROOT}/gate"
