"""Paired statistics for a candidate against the champion on the same eval items.

Why paired, why non-inferiority, and why these two tests:

* Both models answer the same items, so their per-item results are correlated: an item one model finds hard,
  the other usually does too. Analysing the per-item differences cancels that item-difficulty variance, which
  gives a much narrower confidence interval for the same number of items than comparing two unpaired means
  (or two absolute scores, which ignore sampling noise altogether).
* The release question is "is the candidate not meaningfully worse than what serves today?", not "is it
  better?". Requiring a significant improvement would block an equally good but cheaper or faster model, and
  with a few hundred items would mostly reflect noise. So the gate tests non-inferiority: the lower bound of
  the two-sided CI of (candidate - champion) must lie above -margin, where the margin is the largest loss the
  release owner accepts. A two-sided 95% CI makes this a one-sided test at the 2.5% level, the usual
  convention for non-inferiority. Requiring it on every suite (an intersection-union test) keeps the overall
  false-acceptance rate at that level without a multiplicity correction.
* The CI is a percentile bootstrap of the mean paired difference: it makes no normality assumption and works
  for 0/1 and graded scores alike. It is somewhat too narrow for small suites (tens of items) and degenerate
  (width 0) when every difference is equal, so size suites in the hundreds.
* For pass/fail items McNemar's test, which uses only the discordant pairs (b: candidate passes where the
  champion fails, c: the reverse), is reported as a cross-check for a difference in either direction: exact
  binomial below 25 discordant pairs, chi-square with continuity correction above. The verdict itself comes
  from the CI and the margin, not from the p-value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from steps.evals.engines.base import EvalError

__all__ = [
    "EXACT_BELOW",
    "Comparison",
    "McNemarResult",
    "compare_metric",
    "mcnemar",
    "non_inferiority",
    "pair_by_id",
    "paired_bootstrap_ci",
]

EXACT_BELOW = 25
"""McNemar uses the exact binomial test when b + c is below this, else chi-square with continuity correction."""

_MAX_CELLS = 4_000_000  # resample indices drawn per chunk (bounds memory at ~32 MB)
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class McNemarResult(BaseModel):
    """McNemar's test on paired pass/fail results.

    Attributes:
        b: Pairs where the candidate passes and the champion fails.
        c: Pairs where the champion passes and the candidate fails.
        statistic: min(b, c) for the exact test; the continuity-corrected chi-square for the asymptotic one.
        p_value: Two-sided p-value.
        method: "exact" (binomial) or "chi2" (chi-square, 1 degree of freedom, continuity corrected).
    """

    model_config = _FROZEN

    b: int
    c: int
    statistic: float
    p_value: float
    method: Literal["exact", "chi2"]


class Comparison(BaseModel):
    """Candidate against champion on one metric of one suite, paired by item.

    `diff`, `ci_low` and `ci_high` are raw (candidate - champion), whatever the metric's direction; the
    verdict accounts for the direction. `verdict` is "pass" when the CI rules out a loss larger than `margin`;
    `significantly_better`/`significantly_worse` say whether the CI excludes 0 on that side.
    """

    model_config = _FROZEN

    metric: str
    suite: str = ""
    n: int
    candidate: float
    champion: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    margin: float
    higher_is_better: bool
    mcnemar: McNemarResult | None = None
    verdict: Literal["pass", "fail"]
    significantly_better: bool
    significantly_worse: bool

    @property
    def mcnemar_p(self) -> float | None:
        """McNemar's two-sided p-value where the metric is pass/fail per item, else None."""
        return self.mcnemar.p_value if self.mcnemar else None


def _as_pair(cand: Sequence[float], champ: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(cand, dtype=float)
    b = np.asarray(champ, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise EvalError(
            f"paired results need one value per item for both models, got {a.shape} and {b.shape}: pair by item id"
        )
    if a.size == 0:
        raise EvalError("paired results are empty: the suite needs at least one item")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise EvalError("paired results contain NaN or infinite scores: fix the scorer")
    return a, b


def paired_bootstrap_ci(
    cand: Sequence[float],
    champ: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of the mean paired difference (cand - champ).

    Items are resampled with replacement `resamples` times; the CI is the (1 - confidence)/2 and
    (1 + confidence)/2 quantiles of the resampled means. Deterministic for a given seed.

    Args:
        cand: The candidate's per-item values.
        champ: The champion's per-item values, in the same item order.
        confidence: Two-sided confidence level in (0, 1).
        resamples: Bootstrap resamples, at least 1.
        seed: Seed of the numpy generator.

    Returns:
        (mean difference, CI low, CI high).

    Raises:
        EvalError: The sequences differ in length, are empty or hold non-finite values.
        ValueError: `confidence` or `resamples` is out of range.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} is outside (0, 1): give a level such as 0.95")
    if resamples < 1:
        raise ValueError(f"resamples {resamples} must be at least 1: give e.g. 10000")
    a, b = _as_pair(cand, champ)
    diffs = a - b
    n = diffs.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diffs[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diffs.mean()), float(lo), float(hi)


def mcnemar(cand_pass: Sequence[bool], champ_pass: Sequence[bool]) -> McNemarResult:
    """McNemar's two-sided test for paired pass/fail results.

    Exact binomial test, p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2), when b + c < 25;
    otherwise chi-square = (|b - c| - 1)^2 / (b + c) with p from the chi-square(1) survival function,
    erfc(sqrt(chi2 / 2)). With no discordant pairs, p = 1.

    Raises:
        EvalError: The sequences differ in length or are empty.
    """
    a, c_arr = _as_pair([bool(x) for x in cand_pass], [bool(x) for x in champ_pass])
    cand_ok, champ_ok = a.astype(bool), c_arr.astype(bool)
    b = int(np.sum(cand_ok & ~champ_ok))
    c = int(np.sum(~cand_ok & champ_ok))
    n = b + c
    if n < EXACT_BELOW:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return McNemarResult(b=b, c=c, statistic=float(k), p_value=min(1.0, 2.0 * tail), method="exact")
    chi2 = (abs(b - c) - 1) ** 2 / n
    return McNemarResult(b=b, c=c, statistic=chi2, p_value=math.erfc(math.sqrt(chi2 / 2.0)), method="chi2")


def non_inferiority(diff_lo: float, margin: float) -> bool:
    """Whether the candidate is non-inferior: the CI's lower bound of (candidate - champion) exceeds -margin.

    For a lower-is-better metric pass the lower bound of (champion - candidate), i.e. -ci_high of the raw
    difference; `compare_metric` does this for you.
    """
    if margin < 0 or math.isnan(margin):
        raise ValueError(f"margin {margin} must be >= 0: give the largest acceptable loss, e.g. 0.05")
    return diff_lo > -margin


def _binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def compare_metric(
    name: str,
    cand_scores: Sequence[float],
    champ_scores: Sequence[float],
    *,
    higher_is_better: bool = True,
    margin: float = 0.05,
    confidence: float = 0.95,
    seed: int = 0,
    resamples: int = 10_000,
    suite: str = "",
) -> Comparison:
    """Compare paired per-item values of one metric: bootstrap CI, McNemar (for 0/1 values), non-inferiority.

    Args:
        name: The metric's name, e.g. "accuracy".
        cand_scores: The candidate's per-item values.
        champ_scores: The champion's per-item values, in the same item order (see `pair_by_id`).
        higher_is_better: False for rates to keep low (attack success, over-refusal, PII leaks).
        margin: The largest loss accepted, in the metric's units.
        confidence: Two-sided confidence level of the CI.
        seed: Bootstrap seed.
        resamples: Bootstrap resamples.
        suite: The suite's name, recorded in the result.

    Returns:
        The comparison; `verdict` is "pass" when the candidate is non-inferior within `margin`.
    """
    a, b = _as_pair(cand_scores, champ_scores)
    diff, lo, hi = paired_bootstrap_ci(a.tolist(), b.tolist(), confidence=confidence, resamples=resamples, seed=seed)
    gain_lo, gain_hi = (lo, hi) if higher_is_better else (-hi, -lo)
    test = mcnemar((a == 1.0).tolist(), (b == 1.0).tolist()) if _binary(a) and _binary(b) else None
    return Comparison(
        metric=name,
        suite=suite,
        n=int(a.size),
        candidate=float(a.mean()),
        champion=float(b.mean()),
        diff=diff,
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
        margin=margin,
        higher_is_better=higher_is_better,
        mcnemar=test,
        verdict="pass" if non_inferiority(gain_lo, margin) else "fail",
        significantly_better=gain_lo > 0,
        significantly_worse=gain_hi < 0,
    )


def pair_by_id(suite: str, cand: Mapping[str, float], champ: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """Align two {item id: value} maps into two lists in the same (sorted id) order.

    Raises:
        EvalError: The id sets differ; the message names the suite and up to five missing ids on each side.
    """
    only_cand = sorted(set(cand) - set(champ))
    only_champ = sorted(set(champ) - set(cand))
    if only_cand or only_champ:
        sides = (("champion", only_cand), ("candidate", only_champ))
        parts = [f"missing from {side}: {_few(ids)}" for side, ids in sides if ids]
        raise EvalError(
            f"suite {suite}: candidate and champion results cover different items ({'; '.join(parts)}): "
            "evaluate both models on the same suite version"
        )
    ids = sorted(cand)
    return [cand[i] for i in ids], [champ[i] for i in ids]


def _few(ids: list[str], show: int = 5) -> str:
    more = f" and {len(ids) - show} more" if len(ids) > show else ""
    return ", ".join(ids[:show]) + more
