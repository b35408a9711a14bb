"""``mmcosine``: Multi-Modal Cosine loss (Xu et al., ICASSP 2023), METHODS.md §7.6.

Each modality's logits are scaled cosines between its (normalised) features and the (normalised)
class rows of its block of the head, ``z_m = s * cos(h_m, W_m,k)``; the fused logits are their sum
and the loss is cross-entropy on it. Each modality's logits are bounded by ``[-s, s]``, so no
modality can dominate through feature or weight norm. The head's bias is unused.

The method builds its model with the cosine head: ``concat`` (or ``cosine``) becomes the MMCosine
head, and the symmetric ``film_sym`` / ``gated_sym`` heads get cosine logits over their streams, as
in the official code. Unlike BalanceMM, it is always on (no modulation window), as in the paper.

``lam`` > 0 adds the optional NCE term of the paper's supplement: a symmetric InfoNCE between the
normalised features of every pair of modalities (temperature ``temperature``), weighted by ``lam``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .registry import register_method

COSINE_HEADS = {"concat": "cosine", "cosine": "cosine", "film_sym": "film_sym", "gated_sym": "gated_sym"}


def pairwise_nce(features: Mapping[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean symmetric InfoNCE over all modality pairs; positives are the same sample's features."""
    losses = []
    for first, second in combinations(features, 2):
        a, b = F.normalize(features[first], dim=1), F.normalize(features[second], dim=1)
        logits = a @ b.t() / temperature
        targets = torch.arange(len(a), device=a.device)
        losses.append((F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2)
    return torch.stack(losses).mean()


@register_method
class MMCosine(Method):
    name = "mmcosine"

    def __init__(self, scaling: float = 10.0, lam: float = 0.0, temperature: float = 0.1) -> None:
        super().__init__()
        if scaling <= 0:
            raise ValueError(f"scaling must be > 0, got {scaling}")
        self.scaling, self.lam, self.temperature = scaling, lam, temperature

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        fusion = spec["fusion"]
        if fusion not in COSINE_HEADS:
            raise ValueError(f"method 'mmcosine' needs a head split in per-modality blocks "
                             f"(concat, cosine, film_sym, gated_sym), not {fusion!r}")
        options = dict(spec.get("fusion_options", {}))
        options.pop("cosine_scale", None)
        options.pop("scale", None)
        options["scale" if COSINE_HEADS[fusion] == "cosine" else "cosine_scale"] = self.scaling
        return {**spec, "fusion": COSINE_HEADS[fusion], "fusion_options": options}

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        if getattr(model.head, "cosine_scale", None) is None:
            raise ValueError("method 'mmcosine' needs a cosine head (CosineFusion, or film_sym/gated_sym "
                             "with cosine_scale); build the model through adapt_model_spec")

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = F.cross_entropy(output.logits, batch["label"])
        if self.lam > 0:
            nce = pairwise_nce(output.features, self.temperature)
            self._logs["nce"] = nce.detach()
            loss = loss + self.lam * nce
        return loss

    def __repr__(self) -> str:
        return f"MMCosine(scaling={self.scaling}, lam={self.lam})"
