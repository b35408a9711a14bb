"""Forward passes of modality coalitions: the inputs of the modalities outside a coalition zeroed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch

from ..models.model import lengths_of


def proper_coalitions(modalities: Sequence[str]) -> list[frozenset[str]]:
    """Every non-empty coalition of ``modalities`` except the full one, smallest first."""
    return [frozenset(c) for size in range(1, len(modalities)) for c in combinations(modalities, size)]


def stacked_coalition_batch(
    batch: Mapping[str, torch.Tensor], modalities: Sequence[str], coalitions: Sequence[frozenset[str]]
) -> dict[str, torch.Tensor]:
    """One batch holding a copy of ``batch`` per coalition, with the inputs of the modalities
    outside the coalition replaced by zeros, concatenated along the batch dimension (a removed
    variable-length input keeps its lengths: zeros over its valid steps)."""
    stacked = {
        m: torch.cat([batch[m] if m in coalition else torch.zeros_like(batch[m]) for coalition in coalitions])
        for m in modalities
    }
    stacked.update((key, lengths.repeat(len(coalitions))) for key, lengths in lengths_of(batch, modalities).items())
    return stacked
