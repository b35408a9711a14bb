"""EER and minDCF against independent computations: scikit-learn's ROC points and brute force."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from avbalance.verification.metrics import equal_error_rate, min_dcf


def sklearn_eer(scores, targets) -> float:
    """The miss = false-alarm crossing of the ROC points, interpolated on the crossing segment."""
    fpr, tpr, _ = roc_curve(targets, scores, drop_intermediate=False)
    fnr = 1 - tpr
    for i in range(1, len(fpr)):
        before, after = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
        if after == 0:
            return fpr[i]
        if before > 0 > after:
            # fpr and fnr move linearly along the segment; they meet at this share of it
            share = before / (before - after)
            return fpr[i - 1] + share * (fpr[i] - fpr[i - 1])
    raise AssertionError("no crossing")


def brute_force_dcf(scores, targets, p_target=0.01) -> float:
    target_scores, nontarget_scores = scores[targets], scores[~targets]
    costs = []
    for threshold in [*np.unique(scores), np.inf]:
        miss = np.mean(target_scores < threshold)
        false_alarm = np.mean(nontarget_scores >= threshold)
        costs.append(p_target * miss + (1 - p_target) * false_alarm)
    return min(costs) / min(p_target, 1 - p_target)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many tied scores across both classes
def test_random_scores_match_independent_computations(seed, decimals):
    rng = np.random.default_rng(seed)
    targets = rng.random(400) < 0.3
    scores = rng.normal(size=400) + 1.2 * targets
    if decimals is not None:
        scores = np.round(scores, decimals)
    eer = equal_error_rate(scores, targets)
    assert eer == pytest.approx(sklearn_eer(scores, targets), abs=1e-12)
    assert 0.1 < eer < 0.45
    assert min_dcf(scores, targets) == pytest.approx(brute_force_dcf(scores, targets), abs=1e-12)


def test_perfectly_separated_trials_have_zero_error():
    targets = np.array([True] * 5 + [False] * 7)
    scores = np.where(targets, 0.9, 0.1) + np.linspace(0, 0.05, 12)
    assert equal_error_rate(scores, targets) == 0.0
    assert min_dcf(scores, targets) == 0.0


def test_reversed_and_uninformative_scores():
    targets = np.array([True] * 4 + [False] * 4)
    reversed_scores = np.where(targets, 0.0, 1.0) + np.arange(8) * 0.01
    assert equal_error_rate(reversed_scores, targets) == 1.0
    tied = np.zeros(8)  # one threshold: accept all or nothing
    assert equal_error_rate(tied, targets) == pytest.approx(0.5)
    assert min_dcf(tied, targets) == pytest.approx(1.0)  # no threshold beats "reject all"


def test_min_dcf_small_example_by_hand():
    # targets 0.9, 0.4; non-targets 0.5, 0.1. Threshold 0.9: miss 1/2, fa 0 -> 0.005 / 0.01 = 0.5
    scores = np.array([0.9, 0.4, 0.5, 0.1])
    targets = np.array([True, True, False, False])
    assert min_dcf(scores, targets) == pytest.approx(0.5)
    assert min_dcf(scores, targets, p_target=0.5) == pytest.approx((0.5 * 0.5 + 0) / 0.5)
    # EER: points (fa, miss): (0,1), (0,.5), (.5,.5), (.5,0), (1,0) -> the curves meet at 0.5
    assert equal_error_rate(scores, targets) == pytest.approx(0.5)


def test_one_class_only_is_refused():
    with pytest.raises(ValueError, match="both target and non-target"):
        equal_error_rate(np.array([0.1, 0.2]), np.array([True, True]))
