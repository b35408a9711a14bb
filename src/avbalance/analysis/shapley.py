"""Modality contribution: dataset-level Shapley values and an imbalance degree (METHODS.md §6.3-6.4).

**Value of a coalition.** For a set ``S`` of modalities, ``v(S)`` is the accuracy of the fused
logits over a split when every modality outside ``S`` is *removed*: its encoder feature is replaced
by a reference feature and the fusion head is evaluated again (the encoders do not rerun). Two
removal rules:

* ``zero`` (default): the reference is the zero vector, as BalanceMM zeroes removed inputs;
* ``mean``: the reference is the modality's mean feature over the training split, an "average
  sample" that keeps the head's input in its usual range.

``v(empty)`` is the accuracy with every modality removed (chance level or the majority class for the
``mean`` rule); it is not taken as 0.

**Shapley value** of modality ``m`` (exact, over all ``2^M`` coalitions)::

    phi_m = sum over S not containing m of |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S))

The values add up to ``v(all) - v(empty)`` (efficiency).

**Imbalance degree.** With the gain ``G = v(all) - v(empty)`` and each modality's share
``s_m = phi_m / G``, the imbalance degree is the mean over pairs ``m < n`` of ``|s_m - s_n|``; for two
modalities ``|phi_a - phi_v| / (phi_a + phi_v)``. 0 means every modality contributes equally, 1 (two
modalities) that one modality brings the whole gain and the other nothing; it exceeds 1 when a
modality hurts (negative value). It is undefined (``None``) when ``G <= 0`` or for one modality.
``imbalance_gap``, the mean pairwise ``|phi_m - phi_n|``, is the same spread in accuracy units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from math import factorial
from typing import Any

import torch

from ..errors import ConfigError
from ..models.fusion import FusionHead
from .features import SplitFeatures

REMOVAL_RULES = ("zero", "mean")
EMPTY = "none"  # the name of the empty coalition in results


def coalitions(modalities: Sequence[str]) -> list[frozenset[str]]:
    """All ``2^M`` subsets of the modalities, from the empty set to the full set."""
    return [frozenset(c) for size in range(len(modalities) + 1) for c in combinations(modalities, size)]


def coalition_name(coalition: frozenset[str], modalities: Sequence[str]) -> str:
    return "+".join(m for m in modalities if m in coalition) or EMPTY


def check_removal(rule: str) -> None:
    if rule not in REMOVAL_RULES:
        raise ConfigError(f"unknown removal rule {rule!r}; choose one of: {', '.join(REMOVAL_RULES)}")


def reference_features(
    rule: str, features: SplitFeatures, train_features: SplitFeatures | None = None
) -> dict[str, torch.Tensor]:
    """The feature that stands in for each removed modality, shape (D_m,)."""
    check_removal(rule)
    if rule == "zero":
        return {m: torch.zeros(f.shape[1]) for m, f in features.features.items()}
    if train_features is None:
        raise ValueError("the 'mean' removal rule needs the training split's features")
    return {m: f.mean(dim=0) for m, f in train_features.features.items()}


@torch.no_grad()
def coalition_accuracy(
    head: FusionHead,
    features: SplitFeatures,
    coalition: frozenset[str],
    reference: Mapping[str, torch.Tensor],
    batch_size: int = 1024,
) -> float:
    """Fused accuracy with the modalities outside ``coalition`` replaced by their reference feature."""
    device = next(head.parameters()).device
    count = len(features.labels)
    correct = 0
    for start in range(0, count, batch_size):
        chunk = {}
        for modality, feature in features.features.items():
            part = feature[start : start + batch_size]
            chunk[modality] = (part if modality in coalition else reference[modality].expand_as(part)).to(device)
        predictions = head(chunk).logits.argmax(dim=1).cpu()
        correct += int((predictions == features.labels[start : start + batch_size]).sum())
    return correct / count


def shapley_values(values: Mapping[frozenset[str], float], modalities: Sequence[str]) -> dict[str, float]:
    """Exact Shapley values from the value ``v(S)`` of every coalition ``S``."""
    count = len(modalities)
    phi = {}
    for modality in modalities:
        total = 0.0
        for coalition in coalitions([m for m in modalities if m != modality]):
            weight = factorial(len(coalition)) * factorial(count - len(coalition) - 1) / factorial(count)
            total += weight * (values[coalition | {modality}] - values[coalition])
        phi[modality] = total
    return phi


def mean_pairwise_difference(values: Mapping[str, float]) -> float | None:
    pairs = list(combinations(values.values(), 2))
    return sum(abs(a - b) for a, b in pairs) / len(pairs) if pairs else None


def imbalance(phi: Mapping[str, float], gain: float) -> dict[str, Any]:
    """Shares of the gain, the imbalance degree (scale-free) and the gap (accuracy units)."""
    shares = {m: value / gain for m, value in phi.items()} if gain > 0 else None
    return {
        "share": shares,
        "imbalance_degree": mean_pairwise_difference(shares) if shares else None,
        "imbalance_gap": mean_pairwise_difference(phi),
    }


def modality_contributions(
    head: FusionHead, features: SplitFeatures, removal: str = "zero", train_features: SplitFeatures | None = None
) -> dict[str, Any]:
    """Coalition accuracies, Shapley values and the imbalance degree of a model on a split."""
    modalities = list(features.features)
    reference = reference_features(removal, features, train_features)
    values = {c: coalition_accuracy(head, features, c, reference) for c in coalitions(modalities)}
    phi = shapley_values(values, modalities)
    full, empty = values[frozenset(modalities)], values[frozenset()]
    return {
        "removal": removal,
        "samples": len(features.labels),
        "coalition_accuracy": {coalition_name(c, modalities): v for c, v in values.items()},
        "full": full,
        "empty": empty,
        "shapley": phi,
        **imbalance(phi, full - empty),
    }
