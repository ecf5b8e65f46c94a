"""Paired statistics: bootstrap CI, McNemar, non-inferiority, pairing by id."""

import math

import numpy as np
import pytest

from steps.evals.engines.base import EvalError
from steps.evals.stats import compare_metric, mcnemar, non_inferiority, pair_by_id, paired_bootstrap_ci


def _bernoulli_pairs(seed: int, n: int, p_cand: float, p_champ: float) -> tuple[list[float], list[float]]:
    """Correlated paired 0/1 outcomes: a shared item difficulty drives both models."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)  # one uniform per item, shared: items easy for one model are easy for the other
    return (u < p_cand).astype(float).tolist(), (u < p_champ).astype(float).tolist()


def test_bootstrap_ci_covers_true_difference_on_most_seeds() -> None:
    """GIVEN 300 paired Bernoulli items drawn independently per model with p = 0.70 and 0.62 (true diff 0.08)
    WHEN the 95% CI is computed on 40 fresh samples
    THEN it covers 0.08 on roughly 95% of them (at least 85%, allowing for 40-sample noise).
    """
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        cand = (rng.random(300) < 0.70).astype(float)
        champ = (rng.random(300) < 0.62).astype(float)
        _, lo, hi = paired_bootstrap_ci(cand.tolist(), champ.tolist(), resamples=2000, seed=seed)
        covered += lo <= 0.08 <= hi
    assert covered >= 34


def test_bootstrap_clear_improvement_has_positive_lower_bound() -> None:
    """GIVEN 300 items where the candidate passes every item the champion passes and about 20% more
    WHEN the CI is computed
    THEN the mean difference is the difference of the means and the whole CI lies above 0.
    """
    cand, champ = _bernoulli_pairs(0, 300, 0.8, 0.6)
    diff, lo, hi = paired_bootstrap_ci(cand, champ)
    assert diff == pytest.approx(np.mean(cand) - np.mean(champ))
    assert 0 < lo < diff < hi


def test_bootstrap_identical_results_give_zero_width_ci_at_zero() -> None:
    """GIVEN identical results for both models
    WHEN the CI is computed
    THEN it is exactly (0, 0, 0): it contains 0 and has width 0.
    """
    scores = [1.0, 0.0, 1.0, 0.5] * 25
    assert paired_bootstrap_ci(scores, scores) == (0.0, 0.0, 0.0)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    """GIVEN the same graded scores
    WHEN the CI is computed twice with one seed and once with another
    THEN the same seed gives the same CI and another seed a (slightly) different one.
    """
    rng = np.random.default_rng(3)
    cand, champ = rng.random(200).tolist(), rng.random(200).tolist()
    assert paired_bootstrap_ci(cand, champ, seed=7) == paired_bootstrap_ci(cand, champ, seed=7)
    assert paired_bootstrap_ci(cand, champ, seed=7) != paired_bootstrap_ci(cand, champ, seed=8)


def test_bootstrap_refuses_mismatched_or_empty_input() -> None:
    """GIVEN sequences of different lengths, empty ones, or a bad confidence
    WHEN the CI is computed
    THEN it raises instead of pairing wrongly.
    """
    with pytest.raises(EvalError, match="one value per item"):
        paired_bootstrap_ci([1.0, 0.0], [1.0])
    with pytest.raises(EvalError, match="empty"):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([1.0], [0.0], confidence=1.5)


def _pairs(b: int, c: int, both: int = 5, neither: int = 5) -> tuple[list[bool], list[bool]]:
    cand = [True] * b + [False] * c + [True] * both + [False] * neither
    champ = [False] * b + [True] * c + [True] * both + [False] * neither
    return cand, champ


def test_mcnemar_exact_matches_hand_computation() -> None:
    """GIVEN b = 8 discordant pairs for the candidate and c = 2 for the champion
    WHEN McNemar's test runs
    THEN it is the exact binomial test: p = 2 * (1 + 10 + 45) / 2**10 = 0.109375.
    """
    result = mcnemar(*_pairs(8, 2))
    assert (result.b, result.c, result.method) == (8, 2, "exact")
    assert result.p_value == pytest.approx(0.109375, abs=1e-12)
    assert result.statistic == 2.0


def test_mcnemar_chi_square_matches_hand_computation() -> None:
    """GIVEN b = 30 and c = 10 (40 discordant pairs, >= 25)
    WHEN McNemar's test runs
    THEN it is the continuity-corrected chi-square: (|30 - 10| - 1)^2 / 40 = 9.025, p = 0.0026631 (chi2(1) sf).
    """
    result = mcnemar(*_pairs(30, 10))
    assert result.method == "chi2"
    assert result.statistic == pytest.approx(9.025)
    assert result.p_value == pytest.approx(0.002663119259, rel=1e-9)


def test_mcnemar_switches_method_at_25_and_handles_no_discordance() -> None:
    """GIVEN 24 and 25 discordant pairs, and none at all
    WHEN McNemar's test runs
    THEN 24 uses the exact test, 25 the chi-square, and no discordant pairs give p = 1.
    """
    assert mcnemar(*_pairs(12, 12)).method == "exact"
    assert mcnemar(*_pairs(13, 12)).method == "chi2"
    assert mcnemar(*_pairs(0, 0)).p_value == 1.0
    assert mcnemar(*_pairs(12, 12)).p_value == 1.0


def test_non_inferiority_boundary() -> None:
    """GIVEN CI lower bounds just above, at and below -margin
    WHEN non-inferiority is decided
    THEN only strictly above -margin passes.
    """
    assert non_inferiority(-0.04, 0.05)
    assert not non_inferiority(-0.05, 0.05)
    assert not non_inferiority(-0.2, 0.05)
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(0.0, -0.1)


def _shifted(n: int, base_pass: int, lost: int) -> tuple[list[float], list[float]]:
    """Champion passes `base_pass` of n items; the candidate loses `lost` of those and gains none."""
    champ = [1.0] * base_pass + [0.0] * (n - base_pass)
    cand = [0.0] * lost + [1.0] * (base_pass - lost) + [0.0] * (n - base_pass)
    return cand, champ


def test_slightly_worse_within_margin_passes() -> None:
    """GIVEN a candidate 1 point worse than the champion on 400 items (4 items lost)
    WHEN compared with a 0.05 margin
    THEN the verdict is pass (non-inferior), not significantly better, and McNemar is reported.
    """
    cand, champ = _shifted(400, 320, 4)
    comp = compare_metric("accuracy", cand, champ, margin=0.05)
    assert comp.diff == pytest.approx(-0.01)
    assert comp.verdict == "pass"
    assert not comp.significantly_better
    assert comp.mcnemar is not None and comp.mcnemar.c == 4
    assert comp.mcnemar_p == pytest.approx(0.125)


def test_much_worse_fails() -> None:
    """GIVEN a candidate 20 points worse on 400 items
    WHEN compared with a 0.05 margin
    THEN the verdict is fail and it is significantly worse.
    """
    cand, champ = _shifted(400, 320, 80)
    comp = compare_metric("accuracy", cand, champ, margin=0.05)
    assert comp.verdict == "fail"
    assert comp.significantly_worse
    assert comp.ci_high < 0


def test_lower_is_better_flips_the_direction() -> None:
    """GIVEN attack-success indicators where the candidate succeeds on 20 more attacks of 200 than the champion
    WHEN compared as a lower-is-better metric with a 0.05 margin
    THEN the raw diff is +0.10 and the verdict is fail; the reverse comparison passes and is significantly better.
    """
    worse = [1.0] * 30 + [0.0] * 170
    better = [1.0] * 10 + [0.0] * 190
    comp = compare_metric("attack_success_rate", worse, better, higher_is_better=False, margin=0.05)
    assert comp.diff == pytest.approx(0.10)
    assert comp.verdict == "fail"
    rev = compare_metric("attack_success_rate", better, worse, higher_is_better=False, margin=0.05)
    assert rev.verdict == "pass" and rev.significantly_better


def test_graded_scores_get_no_mcnemar() -> None:
    """GIVEN scores in (0, 1) rather than 0/1
    WHEN compared
    THEN no McNemar test is reported.
    """
    comp = compare_metric("accuracy", [0.5, 0.7, 0.9], [0.4, 0.6, 0.9])
    assert comp.mcnemar is None and comp.mcnemar_p is None
    assert math.isclose(comp.diff, 0.2 / 3)


def test_pair_by_id_aligns_and_refuses_different_items() -> None:
    """GIVEN candidate and champion results keyed by id, once with the same ids and once with different ones
    WHEN paired
    THEN the same ids align in sorted order, and different ids raise naming the suite and the missing ids.
    """
    assert pair_by_id("qa", {"b": 1.0, "a": 0.0}, {"a": 1.0, "b": 0.5}) == ([0.0, 1.0], [1.0, 0.5])
    cand = {f"q{i}": 1.0 for i in range(10)}
    champ = {"q0": 1.0, "x1": 0.0}
    with pytest.raises(EvalError) as err:
        pair_by_id("golden-qa", cand, champ)
    message = str(err.value)
    assert "suite golden-qa" in message
    assert "missing from champion: q1, q2, q3, q4, q5 and 4 more" in message
    assert "missing from candidate: x1" in message
    assert "\n" not in message
