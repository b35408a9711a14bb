"""The multimodal model: one encoder per modality (by name) and a fusion head."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..data.base import lengths_key
from .fusion import FusionHead


@dataclass
class ModelOutput:
    """``logits`` (B, C) fused; ``unimodal_logits[m]`` (B, C) per modality; ``features[m]`` (B, D_m)."""

    logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


def lengths_of(batch: Mapping[str, torch.Tensor], modalities: Iterable[str]) -> dict[str, torch.Tensor]:
    """The ``<m>_lengths`` entries of ``batch`` for those of ``modalities`` that are variable-length."""
    return {lengths_key(m): batch[lengths_key(m)] for m in modalities if lengths_key(m) in batch}


def run_encoder(encoder: nn.Module, modality: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``encoder`` on ``batch[modality]``, with the lengths when it takes them and the batch has them."""
    lengths = batch.get(lengths_key(modality)) if getattr(encoder, "takes_lengths", False) else None
    return encoder(batch[modality]) if lengths is None else encoder(batch[modality], lengths)


class MultimodalModel(nn.Module):
    """``forward(batch)`` encodes ``batch[m]`` with ``encoders[m]`` for every modality and fuses
    (an encoder that takes lengths also gets ``batch[f"{m}_lengths"]`` when the batch has it).

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

    def encode_modality(self, modality: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Modality ``modality``'s features ``(B, D_m)``; a variable-length modality's encoder also
        gets ``batch[f"{modality}_lengths"]``."""
        return run_encoder(self.encoders[modality], modality, batch)

    def encode(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.encode_modality(m, batch) for m in self.encoders}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
        features = self.encode(batch)
        fused = self.head(features)
        return ModelOutput(fused.logits, fused.unimodal_logits, features)

    def encoder_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        return self.encoders[modality].parameters()
