"""``cml``: Calibrating Multimodal Learning (Ma et al., ICML 2023), METHODS.md §7.9.

Principle: a prediction's confidence should not increase when a modality is removed. Once per
epoch the modalities are put in a random order (the same on every rank: drawn from the epoch and
``seed`` when given, otherwise the run seed: ``Method.draw_seed``). Starting from the full logits
``z^(0) = z``, modalities are removed one at a time from the end of that order; a removed
modality's *features* are replaced by zeros before the head, so ``z^(j)`` is the head's output on
the remaining modalities (for ``concat`` exactly ``sum_{m remaining} W_m h_m + b``, BalanceMM's
partial logits). With ``c^(j)_i = max_k softmax(z^(j)_i)_k`` the loss inside the modulation
window is::

    L = (1/M) [CE(z^(0), y) + sum_{j=1}^{M-1} CE(z^(j), y)]
        + lam * sum_{j=1}^{M-1} sum_i relu(c^(j)_i - c^(j-1)_i) * mask_i

with ``mask_i = 0`` where the smaller set predicts the label and the larger one does not: a
smaller set that is right may be the more confident (the official code's "trick 1",
``rank_loss`` in ``cpm/CPM_Nets.py`` of ``QingyangZhang/CML``). ``hinge='batch'`` applies the hinge
to the batch sum instead and ``mask=False`` drops the mask (BalanceMM's behaviour). Outside the
window: ``CE(z, y)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .distributed import all_reduce_sum, world_size
from .modulation import ModulationWindow
from .registry import check_param, register_method


def removal_order(modalities: tuple[str, ...], seed: int, epoch: int) -> list[str]:
    """The epoch's random order of the modalities (the chain removes from its end)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [modalities[i] for i in torch.randperm(len(modalities), generator=generator).tolist()]


def partial_logits(head, features: Mapping[str, torch.Tensor], order: list[str]) -> list[torch.Tensor]:
    """``[z^(1), ..., z^(M-1)]``: the head's output with the last 1, 2, ... modalities of ``order``
    zeroed (their features replaced by zeros)."""
    result = []
    for removed in range(1, len(order)):
        remaining = set(order[: len(order) - removed])
        zeroed = {m: f if m in remaining else torch.zeros_like(f) for m, f in features.items()}
        result.append(head(zeroed).logits)
    return result


def confidence_penalties(
    chain: list[torch.Tensor], labels: torch.Tensor, hinge: str = "sample", mask: bool = True, scale: float = 1.0
) -> torch.Tensor:
    """``sum_j`` of the hinge on ``c^(j) - c^(j-1)`` along the chain of logits ``[z^(0), z^(1), ...]``.

    ``sample``: ``sum_i relu(delta_i * mask_i)``; ``batch``: ``relu(sum_i delta_i * mask_i)``, with
    the sign of the sum taken over all ranks. ``scale`` multiplies the sums (the world size under
    DDP, so that the averaged gradients are those of the sum over the global batch)."""
    total = chain[0].new_zeros(())
    probabilities = [F.softmax(z, dim=1) for z in chain]
    for larger, smaller in zip(probabilities[:-1], probabilities[1:]):
        conf_larger, pred_larger = larger.max(dim=1)
        conf_smaller, pred_smaller = smaller.max(dim=1)
        delta = conf_smaller - conf_larger
        if mask:
            keep = ~((pred_smaller == labels) & (pred_larger != labels))
            delta = delta * keep
        if hinge == "sample":
            total = total + scale * F.relu(delta).sum()
        else:
            local = delta.sum()
            active = (all_reduce_sum(local.detach()) > 0).to(local.dtype)
            total = total + scale * active * local
    return total


@register_method
class CML(ModulationWindow, Method):
    name = "cml"
    min_modalities = 2

    def __init__(self, lam: float = 0.1, modulation_starts: int = 0, modulation_ends: int = 80,
                 hinge: Literal["sample", "batch"] = "sample", mask: bool = True,
                 seed: int | None = None) -> None:  # fmt: skip
        super().__init__()
        check_param(lam >= 0, self.name, f"lam must be >= 0, got {lam}")
        self.lam, self.hinge, self.mask, self.seed = lam, hinge, mask, seed
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self.order: list[str] | None = None
        self._head = None  # the model's head, for the partial logits (set by setup / on_epoch_start)

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        self._head = model.head
        self.order = removal_order(tuple(model.modalities), self.draw_seed, self.epoch)

    def on_epoch_start(self, epoch: int, model=None, data=None) -> None:
        super().on_epoch_start(epoch, model, data)
        if model is not None:
            self._head = model.head
            self.order = removal_order(tuple(model.modalities), self.draw_seed, epoch)

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        if not self.in_window():
            return F.cross_entropy(output.logits, labels)
        head = self._head
        if head is None:
            raise RuntimeError("method 'cml' needs the model's head: call setup(model) before training")
        order = self.order or removal_order(tuple(output.features), self.draw_seed, self.epoch)
        chain = [output.logits, *partial_logits(head, output.features, order)]
        classification = torch.stack([F.cross_entropy(z, labels) for z in chain]).mean()
        penalty = confidence_penalties(chain, labels, self.hinge, self.mask, float(world_size()))
        self._logs["penalty"] = penalty.detach()
        return classification + self.lam * penalty

    def __repr__(self) -> str:
        return (
            f"CML(lam={self.lam}, window=[{self.modulation_starts}, {self.modulation_ends}], "
            f"hinge={self.hinge!r}, mask={self.mask})"
        )
