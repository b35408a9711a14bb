"""Cosine scoring of trials and score normalisation against a cohort.

For a trial (e, t) with raw cosine score s, each side is compared with the cohort: the cosine
scores of e with every cohort utterance give a mean and standard deviation (mu_e, sd_e), likewise
for t, and

* ``snorm``:  s' = ((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2, statistics over the whole cohort;
* ``asnorm``: the same with the statistics of each side's ``top_n`` highest cohort scores only
  (adaptive s-norm).

The cohort of a trial never holds the trial's own two utterances: when they are cohort members
(the default cohort is the evaluation set itself) they are left out for that trial. Standard
deviations are population ones (divided by the number of cohort scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

NORMS = ("none", "snorm", "asnorm")
BLOCK_ENTRIES = 1 << 22  # scores computed at once (32 MiB of float64): bounds memory for large cohorts
TINY = 1e-12


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), TINY)


def cosine_scores(embeddings: np.ndarray, enrol: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows ``enrol[i]`` and ``test[i]`` of ``embeddings``."""
    units = unit_rows(embeddings)
    return np.einsum("ij,ij->i", units[enrol], units[test])


@dataclass
class CohortStats:
    """Each utterance's scores against the cohort, its own cohort entry (if any) left out."""

    total: np.ndarray  # (U,) sum of the scores
    squares: np.ndarray  # (U,) sum of the squared scores
    count: np.ndarray  # (U,) number of scores
    top_scores: np.ndarray  # (U, K) highest scores, descending; -inf where there are fewer than K
    top_members: np.ndarray  # (U, K) their cohort rows


def cohort_stats(units: np.ndarray, cohort: np.ndarray, own: np.ndarray, keep: int) -> CohortStats:
    """``units`` (U, D) and ``cohort`` (C, D) are unit rows; ``own[u]`` is utterance u's cohort row
    or -1; ``keep`` top scores are kept per utterance."""
    keep = min(keep, len(cohort))
    rows_per_block = max(1, BLOCK_ENTRIES // len(cohort))
    parts = []
    for start in range(0, len(units), rows_per_block):
        scores = units[start : start + rows_per_block] @ cohort.T
        mine = own[start : start + rows_per_block]
        members = np.flatnonzero(mine >= 0)
        scores[members, mine[members]] = np.nan  # an utterance is never its own cohort
        parts.append(block_stats(scores, keep))
    return CohortStats(*(np.concatenate(p) for p in zip(*parts)))


def block_stats(scores: np.ndarray, keep: int) -> tuple[np.ndarray, ...]:
    """Sum, sum of squares, count and the ``keep`` highest (descending, with their columns) of each
    row of ``scores``, NaN entries left out."""
    filled = np.nan_to_num(scores, nan=-np.inf)
    top = np.argpartition(-filled, keep - 1, axis=1)[:, :keep]
    order = np.argsort(-np.take_along_axis(filled, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    counts = np.sum(~np.isnan(scores), axis=1)
    return (
        np.nansum(scores, axis=1),
        np.nansum(scores**2, axis=1),
        counts,
        np.take_along_axis(filled, top, axis=1),
        top,
    )


def side_stats(
    stats: CohortStats, side: np.ndarray, other_member: np.ndarray, other_score: np.ndarray, top_n: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the cohort scores of utterances ``side`` with the other
    utterance of their trial (cohort row ``other_member``, -1 if none; score against it
    ``other_score``) left out; over the ``top_n`` highest scores only when ``top_n`` is given."""
    excluded = other_member >= 0
    if top_n is None:
        count = stats.count[side] - excluded
        total = stats.total[side] - np.where(excluded, other_score, 0.0)
        squares = stats.squares[side] - np.where(excluded, other_score**2, 0.0)
    else:
        scores = stats.top_scores[side]
        valid = (stats.top_members[side] != other_member[:, None]) & np.isfinite(scores)
        taken = valid & (np.cumsum(valid, axis=1) <= top_n)
        count = taken.sum(axis=1)
        total = np.where(taken, scores, 0.0).sum(axis=1)
        squares = np.where(taken, scores**2, 0.0).sum(axis=1)
    mean = total / count
    variance = np.maximum(squares / count - mean**2, 0.0)
    return mean, np.sqrt(variance) + TINY


def normalise_scores(
    scores: np.ndarray,
    embeddings: np.ndarray,
    enrol: np.ndarray,
    test: np.ndarray,
    cohort: np.ndarray,
    own: np.ndarray,
    norm: str,
    top_n: int = 300,
) -> np.ndarray:
    """Scores of the trials (``enrol[i]``, ``test[i]``: rows of ``embeddings``) normalised with
    ``norm`` against ``cohort`` embeddings; ``own[u]`` is the cohort row of utterance u, or -1."""
    if norm not in NORMS:
        raise ConfigError(f"unknown score normalisation {norm!r}; choose one of: {', '.join(NORMS)}")
    if norm == "none":
        return np.asarray(scores, dtype=np.float64)
    if len(cohort) < 3:
        raise ConfigError(f"score normalisation needs a cohort of at least 3 utterances, got {len(cohort)}")
    if top_n < 2:
        raise ConfigError(f"--top-n must be at least 2, got {top_n}")
    units, cohort_units = unit_rows(embeddings), unit_rows(cohort)
    used = np.unique(np.concatenate([enrol, test]))
    position = np.full(len(units), -1)
    position[used] = np.arange(len(used))
    # One extra top score per utterance: the trial's other utterance may be among them.
    stats = cohort_stats(units[used], cohort_units, own[used], keep=top_n + 1)
    limit = top_n if norm == "asnorm" else None

    def score_with(side: np.ndarray, other: np.ndarray) -> np.ndarray:
        member = np.where(own[other] == own[side], -1, own[other])  # an utterance paired with itself
        against = np.einsum("ij,ij->i", units[side], cohort_units[np.maximum(member, 0)])
        return side_stats(stats, position[side], member, against, limit)

    enrol_mean, enrol_sd = score_with(enrol, test)
    test_mean, test_sd = score_with(test, enrol)
    return 0.5 * ((scores - enrol_mean) / enrol_sd + (scores - test_mean) / test_sd)
