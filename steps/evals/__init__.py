"""Batch evals: suites, backends and scorers, and the results and paired statistics the gate reads.

This package re-exports the result models (`steps.evals.results`) and the paired statistics
(`steps.evals.stats`); import suites, backends and scoring from their modules.
"""

from steps.evals.results import EvalReport, ExampleResult, SuiteResult
from steps.evals.stats import (
    Comparison,
    McNemarResult,
    compare_metric,
    mcnemar,
    non_inferiority,
    pair_by_id,
    paired_bootstrap_ci,
)

__all__ = [
    "Comparison",
    "EvalReport",
    "ExampleResult",
    "McNemarResult",
    "SuiteResult",
    "compare_metric",
    "mcnemar",
    "non_inferiority",
    "pair_by_id",
    "paired_bootstrap_ci",
]
