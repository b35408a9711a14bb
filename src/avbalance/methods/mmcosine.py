"""``mmcosine``: Multi-Modal Cosine loss (Xu et al., ICASSP 2023), METHODS.md §7.6.

Each modality's logits are scaled cosines between its (normalised) features and the (normalised)
class rows of its block of the head, ``z_m = s * cos(h_m, W_m,k)``; the fused logits are their sum
and the loss is cross-entropy on it. Each modality's logits are bounded by ``[-s, s]``, so no
modality can dominate through feature or weight norm. The head's bias is unused.

The method builds its model with the cosine head: ``concat`` (or ``cosine``) becomes the MMCosine
head, and the symmetric ``film_sym`` / ``gated_sym`` heads get cosine logits over their streams, as
in the official code. Unlike BalanceMM, it is always on (no modulation window), as in the paper.

``lam`` > 0 adds the optional NCE term of the paper's supplement, as the official code
(``GeWu-Lab/MMCosine_ICASSP23``, ``NCELoss`` in ``main_CD.py``) computes it between the encoder
features of the first and the second modality: ``p_ij = softmax_j(cos(h1_i, h2_j) / temperature)``;
pairs with the same label (``j = i`` included) are positives and contribute ``-log p_ij``, the others
are negatives and contribute ``-log(1 - p_ij)``; each kind is averaged over its pairs in row ``i``,
the two averages are added and the rows averaged. With more than two modalities the term is the mean
over the pairs ``(first, second)`` in modality order. A row without negatives (a batch of one label)
has no negative term, where the official code divides by zero. Under DDP each rank uses its own batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .registry import register_method

COSINE_HEADS = {"concat": "cosine", "cosine": "cosine", "film_sym": "film_sym", "gated_sym": "gated_sym"}


# The official code's guard inside both logarithms.
NCE_EPSILON = 1e-10


def label_nce(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The official NCE term between two modalities' features, both ``(B, d)``: same-label pairs
    are positives (``-log p``), the others negatives (``-log(1 - p)``)."""
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"method 'mmcosine': the NCE term (lam > 0) compares features of equal size, "
            f"got {first.shape[1]} and {second.shape[1]}"
        )
    similarity = F.normalize(first, dim=1) @ F.normalize(second, dim=1).t()
    probabilities = F.softmax(similarity / temperature, dim=1)
    positive = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(probabilities.dtype)
    negative = 1 - positive
    positive_term = -(torch.log(probabilities + NCE_EPSILON) * positive).sum(1) / positive.sum(1)
    negative_term = -(torch.log(1 - probabilities + NCE_EPSILON) * negative).sum(1) / negative.sum(1).clamp_min(1)
    return (positive_term + negative_term).mean()


def pairwise_nce(features: Mapping[str, torch.Tensor], labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`label_nce` averaged over the modality pairs ``(first, second)`` in modality order."""
    losses = [
        label_nce(features[first], features[second], labels, temperature) for first, second in combinations(features, 2)
    ]
    return torch.stack(losses).mean()


@register_method
class MMCosine(Method):
    name = "mmcosine"

    def __init__(self, scaling: float = 10.0, lam: float = 0.0, temperature: float = 0.1) -> None:
        super().__init__()
        if scaling <= 0:
            raise ValueError(f"scaling must be > 0, got {scaling}")
        if lam < 0 or temperature <= 0:
            raise ValueError(f"lam must be >= 0 and temperature > 0, got lam={lam}, temperature={temperature}")
        self.scaling, self.lam, self.temperature = scaling, lam, temperature

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        fusion = spec["fusion"]
        if fusion not in COSINE_HEADS:
            raise ValueError(
                f"method 'mmcosine' needs a head split in per-modality blocks "
                f"(concat, cosine, film_sym, gated_sym), not {fusion!r}"
            )
        options = dict(spec.get("fusion_options", {}))
        options.pop("cosine_scale", None)
        options.pop("scale", None)
        options["scale" if COSINE_HEADS[fusion] == "cosine" else "cosine_scale"] = self.scaling
        return {**spec, "fusion": COSINE_HEADS[fusion], "fusion_options": options}

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        if getattr(model.head, "cosine_scale", None) is None:
            raise ValueError(
                "method 'mmcosine' needs a cosine head (CosineFusion, or film_sym/gated_sym "
                "with cosine_scale); build the model through adapt_model_spec"
            )
        sizes = sorted(set(model.head.dims.values()))
        if self.lam > 0 and len(sizes) > 1:
            raise ValueError(
                f"method 'mmcosine': the NCE term (lam > 0) compares features of equal size, "
                f"got {', '.join(map(str, sizes))}"
            )

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = F.cross_entropy(output.logits, batch["label"])
        if self.lam > 0:
            nce = pairwise_nce(output.features, batch["label"], self.temperature)
            self._logs["nce"] = nce.detach()
            loss = loss + self.lam * nce
        return loss

    def __repr__(self) -> str:
        return f"MMCosine(scaling={self.scaling}, lam={self.lam})"
