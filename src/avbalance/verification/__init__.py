"""Speaker verification: trial lists, utterance embeddings, cosine scoring with optional score
normalisation, EER and minDCF (``avbalance verify``; see docs/verification.md)."""

from .metrics import equal_error_rate, min_dcf
from .scoring import cosine_scores, normalise_scores
from .trials import Trial, generate_trials, read_trials

__all__ = [
    "Trial",
    "cosine_scores",
    "equal_error_rate",
    "generate_trials",
    "min_dcf",
    "normalise_scores",
    "read_trials",
]
