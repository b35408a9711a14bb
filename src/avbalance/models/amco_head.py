"""The AMCo head (METHODS §4.9): per-modality logits, class-masked, summed and mixed by a C x C layer.

``z = W* (sum_m mu_m * z_m) + b*`` where ``z_m`` are the per-modality logits of a base head
(``base``, default ``concat``: ``z_m = W_m h_m + b / M``; any registered head works, since each
gives per-modality logits that add up to its output), ``W*`` is the extra ``C x C`` layer
``linear_star`` and ``mu_m`` the class mask of modality m (a row of the ``class_masks`` buffer,
shape ``(M, C)``, all ones unless a method sets it).

The masks act only in training mode: evaluation uses ``z = W* (sum_m z_m) + b*``. The returned
per-modality logits are the unmasked ``z_m`` (the method applies the mask to its own losses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .fusion import FusionHead, HeadOutput, build_head, register_head, xavier_linear


@register_head
class AMCoHead(FusionHead):
    name = "amco"

    def __init__(self, dims: Mapping[str, int], num_classes: int, base: str = "concat",
                 base_options: Mapping[str, Any] | None = None):  # fmt: skip
        super().__init__(dims, num_classes)
        if base == self.name:
            raise ValueError("the base head cannot itself be 'amco'")
        self.base = build_head(base, dims, num_classes, **dict(base_options or {}))
        self.linear_star = xavier_linear(nn.Linear(num_classes, num_classes))
        self.register_buffer("class_masks", torch.ones(len(self.modalities), num_classes), persistent=False)

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:
        unimodal = self.base(features).unimodal_logits
        stacked = torch.stack([unimodal[m] for m in self.modalities])  # (M, B, C)
        if self.training:
            stacked = stacked * self.class_masks.unsqueeze(1)
        return HeadOutput(self.linear_star(stacked.sum(0)), dict(unimodal))
