"""Verification metrics: equal error rate and minimum detection cost.

A trial is accepted when its score is at least the threshold. The operating points are the
thresholds at every distinct score plus "accept nothing"; tied scores are accepted or rejected
together, so ties never make a result depend on the order of the trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

P_TARGET = 0.01
C_MISS = 1.0
C_FA = 1.0


@dataclass
class OperatingPoints:
    """Miss and false-alarm rates at each threshold, thresholds from high to low."""

    thresholds: np.ndarray
    miss: np.ndarray  # share of target trials rejected
    false_alarm: np.ndarray  # share of non-target trials accepted


def check_trials(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {targets.shape} must be matching 1-d arrays")
    if targets.all() or not targets.any():
        raise ValueError("verification metrics need both target and non-target trials")
    if not np.isfinite(scores).all():
        raise ValueError("verification scores must be finite")
    return scores, targets


def operating_points(scores: np.ndarray, targets: np.ndarray) -> OperatingPoints:
    scores, targets = check_trials(scores, targets)
    thresholds = np.unique(scores)[::-1]
    target_scores = np.sort(scores[targets])
    nontarget_scores = np.sort(scores[~targets])
    # Trials with a score >= t: those right of the first position where t would be inserted.
    accepted_targets = len(target_scores) - np.searchsorted(target_scores, thresholds, side="left")
    accepted_nontargets = len(nontarget_scores) - np.searchsorted(nontarget_scores, thresholds, side="left")
    miss = 1.0 - accepted_targets / len(target_scores)
    false_alarm = accepted_nontargets / len(nontarget_scores)
    return OperatingPoints(
        thresholds=np.concatenate([[np.inf], thresholds]),
        miss=np.concatenate([[1.0], miss]),
        false_alarm=np.concatenate([[0.0], false_alarm]),
    )


def equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> float:
    """The rate where the miss and false-alarm curves cross, linearly interpolated between the two
    operating points on either side of the crossing (0 when some threshold separates the trials)."""
    points = operating_points(scores, targets)
    gap = points.miss - points.false_alarm  # falls from 1 (accept nothing) to -1 (accept all)
    after = int(np.argmax(gap <= 0))
    if gap[after] == 0:
        return float(points.false_alarm[after])
    before = after - 1
    share = gap[before] / (gap[before] - gap[after])
    start, end = points.false_alarm[before], points.false_alarm[after]
    return float(start + share * (end - start))


def min_dcf(
    scores: np.ndarray, targets: np.ndarray, p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA
) -> float:
    """The smallest detection cost over all thresholds, normalised by the cost of the better of
    "accept every trial" and "reject every trial": min(C_miss * p_target, C_fa * (1 - p_target))."""
    points = operating_points(scores, targets)
    cost = c_miss * p_target * points.miss + c_fa * (1 - p_target) * points.false_alarm
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))
