"""The multimodal model: one encoder per modality (by name) and a fusion head."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .fusion import FusionHead


@dataclass
class ModelOutput:
    """``logits`` (B, C) fused; ``unimodal_logits[m]`` (B, C) per modality; ``features[m]`` (B, D_m)."""

    logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


class MultimodalModel(nn.Module):
    """``forward(batch)`` encodes ``batch[m]`` with ``encoders[m]`` for every modality and fuses.

    ``model.encoders[m].parameters()`` is modality m's parameter group; nothing is found by
    parsing parameter names.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], head: FusionHead):
        super().__init__()
        if set(encoders) != set(head.modalities):
            raise ValueError(
                f"the head fuses {', '.join(head.modalities)} but the encoders are for {', '.join(encoders)}"
            )
        self.encoders = nn.ModuleDict({m: encoders[m] for m in head.modalities})
        self.head = head

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.head.modalities

    def encode(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: encoder(batch[m]) for m, encoder in self.encoders.items()}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
        features = self.encode(batch)
        fused = self.head(features)
        return ModelOutput(fused.logits, fused.unimodal_logits, features)

    def encoder_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        return self.encoders[modality].parameters()
