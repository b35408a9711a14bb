"""Cosine scoring and s-norm / AS-norm against a direct numpy computation, trial by trial."""

import numpy as np
import pytest

from avbalance.errors import ConfigError
from avbalance.verification import scoring
from avbalance.verification.scoring import cosine_scores, normalise_scores


def cosine(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def direct_norm(embeddings, cohort, own, enrol, test, top_n=None) -> np.ndarray:
    """Every trial on its own: each side's scores against the cohort members other than the trial's
    two utterances, their mean and population standard deviation (over the top-N if given)."""
    normalised = []
    for e, t in zip(enrol, test):
        raw = cosine(embeddings[e], embeddings[t])
        excluded = {own[e], own[t]} - {-1}
        members = [c for c in range(len(cohort)) if c not in excluded]
        sides = []
        for utterance in (e, t):
            scores = np.array([cosine(embeddings[utterance], cohort[c]) for c in members])
            if top_n is not None:
                scores = np.sort(scores)[::-1][:top_n]
            sides.append((raw - scores.mean()) / scores.std())
        normalised.append(sum(sides) / 2)
    return np.array(normalised)


@pytest.fixture
def example():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(9, 4))
    enrol = np.array([0, 1, 2, 3, 4, 0, 8])
    test = np.array([5, 6, 7, 8, 0, 3, 8])  # the last trial pairs an utterance with itself
    return embeddings, enrol, test


def test_cosine_scores(example):
    embeddings, enrol, test = example
    expected = [cosine(embeddings[e], embeddings[t]) for e, t in zip(enrol, test)]
    np.testing.assert_allclose(cosine_scores(embeddings, enrol, test), expected, atol=1e-12)


@pytest.mark.parametrize("norm, top_n", [("snorm", None), ("asnorm", 3), ("asnorm", 5)])
def test_default_cohort_is_the_evaluation_set_without_the_trial(example, norm, top_n):
    embeddings, enrol, test = example
    own = np.arange(len(embeddings))  # every evaluation utterance is a cohort member
    raw = cosine_scores(embeddings, enrol, test)
    result = normalise_scores(raw, embeddings, enrol, test, embeddings, own, norm, top_n or 300)
    np.testing.assert_allclose(result, direct_norm(embeddings, embeddings, own, enrol, test, top_n), atol=1e-9)


@pytest.mark.parametrize("norm, top_n", [("snorm", None), ("asnorm", 4)])
def test_separate_cohort_with_some_shared_utterances(example, norm, top_n):
    embeddings, enrol, test = example
    rng = np.random.default_rng(4)
    cohort = np.concatenate([rng.normal(size=(6, 4)), embeddings[[0, 5]]])  # utterances 0 and 5 are members
    own = np.full(len(embeddings), -1)
    own[0], own[5] = 6, 7
    raw = cosine_scores(embeddings, enrol, test)
    result = normalise_scores(raw, embeddings, enrol, test, cohort, own, norm, top_n or 300)
    np.testing.assert_allclose(result, direct_norm(embeddings, cohort, own, enrol, test, top_n), atol=1e-9)


def test_asnorm_with_top_n_beyond_the_cohort_is_snorm(example):
    embeddings, enrol, test = example
    own = np.arange(len(embeddings))
    raw = cosine_scores(embeddings, enrol, test)
    as_norm = normalise_scores(raw, embeddings, enrol, test, embeddings, own, "asnorm", 100)
    s_norm = normalise_scores(raw, embeddings, enrol, test, embeddings, own, "snorm")
    np.testing.assert_allclose(as_norm, s_norm, atol=1e-9)


def test_no_normalisation_and_bad_settings(example):
    embeddings, enrol, test = example
    own = np.arange(len(embeddings))
    raw = cosine_scores(embeddings, enrol, test)
    np.testing.assert_array_equal(normalise_scores(raw, embeddings, enrol, test, embeddings, own, "none"), raw)
    with pytest.raises(ConfigError, match="unknown score normalisation 'znorm'"):
        normalise_scores(raw, embeddings, enrol, test, embeddings, own, "znorm")
    with pytest.raises(ConfigError, match="--top-n must be at least 2"):
        normalise_scores(raw, embeddings, enrol, test, embeddings, own, "asnorm", 1)


def test_cohort_scores_in_small_blocks_give_the_same_result(example, monkeypatch):
    embeddings, enrol, test = example
    own = np.arange(len(embeddings))
    raw = cosine_scores(embeddings, enrol, test)
    whole = normalise_scores(raw, embeddings, enrol, test, embeddings, own, "asnorm", 4)
    monkeypatch.setattr(scoring, "BLOCK_ENTRIES", 10)  # one utterance per block
    np.testing.assert_allclose(normalise_scores(raw, embeddings, enrol, test, embeddings, own, "asnorm", 4), whole)
