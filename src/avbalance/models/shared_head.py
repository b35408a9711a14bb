"""The shared head (METHODS §4.7): one classifier applied to every modality's feature.

``z_m = head(h_m)`` with the same weights for every modality, so the features must live in one
space: features narrower than the widest one are zero-padded to it (BalanceMM builds the shared
head with input size ``max_m d_m``). The head is linear by default (``fc_out``, as in BalanceMM and
MLA); ``hidden=k`` makes it the two-layer MLP ``d -> k -> C`` of the official ReconBoost code
(``fc_hidden``, ReLU, ``fc_out``).

There is no fused head; the fused logits combine the per-modality logits (``combine``):

* ``entropy`` (MLA): per sample, ``w_m = softmax_m(-H_m)`` with ``H_m`` the entropy of
  ``softmax(z_m)``, and ``z = sum_m w_m z_m`` -- the more confident modality dominates;
* ``boost`` (ReconBoost): ``z = beta * sum_m z_m`` with a learnable scalar ``beta``
  (``boost_rate``, its initial value);
* ``sum``: ``z = sum_m z_m``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import FusionHead, HeadOutput, register_head, xavier_linear

Combine = Literal["entropy", "boost", "sum"]


def entropy_weights(unimodal_logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """MLA's per-sample weights ``softmax_m(-H_m)``, shape ``(M, B, 1)`` in mapping order."""
    entropies = []
    for logits in unimodal_logits.values():
        log_p = F.log_softmax(logits, dim=1)
        entropies.append(-(log_p.exp() * log_p).sum(dim=1, keepdim=True))
    return torch.softmax(-torch.stack(entropies), dim=0)


@register_head
class SharedHead(FusionHead):
    """One classifier shared by all modalities; see the module docstring."""

    name = "shared"

    def __init__(self, dims: Mapping[str, int], num_classes: int, hidden: int | None = None,
                 combine: Combine = "entropy", boost_rate: float = 1.0):  # fmt: skip
        super().__init__(dims, num_classes)
        if combine not in ("entropy", "boost", "sum"):
            raise ValueError(f"combine must be entropy, boost or sum, not {combine!r}")
        self.in_dim = max(dims.values())
        self.hidden, self.combine = hidden, combine
        self.fc_hidden = xavier_linear(nn.Linear(self.in_dim, hidden)) if hidden else None
        self.fc_out = xavier_linear(nn.Linear(hidden or self.in_dim, num_classes))
        if combine == "boost":
            self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))

    def pad(self, feature: torch.Tensor) -> torch.Tensor:
        missing = self.in_dim - feature.shape[1]
        return F.pad(feature, (0, missing)) if missing else feature

    def penultimate(self, feature: torch.Tensor) -> torch.Tensor:
        """The input of ``fc_out`` for one modality's feature (padded, through the hidden layer)."""
        feature = self.pad(feature)
        return torch.relu(self.fc_hidden(feature)) if self.fc_hidden is not None else feature

    def classify(self, feature: torch.Tensor) -> torch.Tensor:
        """``z_m`` for one modality's feature ``(B, d_m)``."""
        return self.fc_out(self.penultimate(feature))

    def fuse(self, unimodal: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(unimodal.values()))
        if self.combine == "entropy":
            return (entropy_weights(unimodal) * stacked).sum(0)
        if self.combine == "boost":
            return self.boost_rate * stacked.sum(0)
        return stacked.sum(0)

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:
        unimodal = {m: self.classify(features[m]) for m in self.modalities}
        return HeadOutput(self.fuse(unimodal), unimodal)
