"""``gblending``: Gradient-Blending (Wang, Tran, Feiszli, CVPR 2020), METHODS.md §7.11.

The loss blends the fused head and every modality's own head, ``L = sum_k w_k CE(z_k, y)`` over
``k in {m_1, ..., m_M, fused}`` (``z_m`` the per-modality logits, ``z_fused`` the fused logits).
The weights measure how much each head generalises versus overfits. At a refresh (every
``super_epoch`` epochs online, once offline) a copy of the current model is trained for
``super_epoch`` epochs on each head's own loss ``CE(z_k, y)`` (fresh optimizer of the training
optimizer's kind; every copy epoch reads a new shuffled order, at every refresh); with per-sample
mean losses ``L^T`` on the training split and ``L^V`` on the *validation* split (never test) before
(``pre``) and after (``now``) that training::

    G_k = L^V_pre - L^V_now                                   (generalisation gain)
    O_k = (L^V_now - L^T_now) - (L^V_pre - L^T_pre)           (change of the overfitting gap)
    w_k = max(G_k, 0) / O_k^2,  normalised to sum to 1        (uniform if every G_k <= 0)

The paper (Sec. 3.3, Prop. 2) has ``w*_k = G_k / O_k^2 / Z``; there is no official code, and the
defaults follow the BalanceMM re-implementation.

The copy's losses are evaluated in eval mode; under DDP loss sums and sample counts are summed over
ranks and the copy's gradients averaged, so every rank derives the same weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .distributed import all_reduce_sum
from .heads import NeedsSplitHead
from .modes import model_mode
from .pretraining import optimizer_recipe, train_for
from .registry import check_param, register_method

FUSED = "fused"


def blending_weights(
    train_pre: torch.Tensor, val_pre: torch.Tensor, train_now: torch.Tensor, val_now: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Normalised ``max(G, 0) / O^2`` per head from the four per-head mean losses (1-d tensors)."""
    gain = val_pre - val_now
    overfit = (val_now - train_now) - (val_pre - train_pre)
    raw = gain.clamp(min=0) / (overfit.pow(2) + eps)
    total = raw.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(raw, 1.0 / raw.numel())
    return raw / total


def head_logits(output: ModelOutput, head: str) -> torch.Tensor:
    return output.logits if head == FUSED else output.unimodal_logits[head]


@torch.no_grad()
def mean_losses(model: MultimodalModel, batches, heads: list[str]) -> torch.Tensor:
    """Per-sample mean cross-entropy of every head over ``batches`` (eval mode), summed over ranks."""
    sums, count = None, None
    with model_mode(model, False):
        for batch in batches:
            output = model(batch)
            labels = batch["label"]
            losses = torch.stack([F.cross_entropy(head_logits(output, h), labels, reduction="sum") for h in heads])
            sums = losses if sums is None else sums + losses
            count = labels.new_tensor(len(labels), dtype=losses.dtype) if count is None else count + len(labels)
    if sums is None:
        raise RuntimeError("method 'gblending': no batches to evaluate (empty split on this rank)")
    totals = all_reduce_sum(torch.cat([sums, count.view(1)]))
    return totals[:-1] / totals[-1]


@register_method
class GBlending(NeedsSplitHead, Method):
    name = "gblending"
    min_modalities = 2
    split_head_need = "a per-modality head (logits of one modality each)"

    def __init__(
        self, super_epoch: int = 10, mode: Literal["online", "offline"] = "online", estimate_batches: int | None = None
    ) -> None:
        super().__init__()
        check_param(super_epoch >= 1, self.name, f"super_epoch must be >= 1, got {super_epoch}")
        check_param(
            estimate_batches is None or estimate_batches >= 1,
            self.name,
            f"estimate_batches must be >= 1, got {estimate_batches}",
        )
        self.super_epoch, self.mode, self.estimate_batches = super_epoch, mode, estimate_batches
        self.weights: torch.Tensor | None = None  # (M + 1,), modalities in model order, then fused
        self.heads: list[str] = []
        self.estimated_at: int | None = None
        self._recipe = None
        self._data = None

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        self.heads = [*model.modalities, FUSED]
        self._recipe = optimizer_recipe(optimizer)
        self._data = data

    def due(self, epoch: int) -> bool:
        if self.weights is None:
            return True
        if self.mode == "offline":
            return False
        return epoch % self.super_epoch == 0 and self.estimated_at != epoch

    def on_epoch_start(self, epoch: int, model=None, data=None) -> None:
        super().on_epoch_start(epoch, model, data)
        data = data if data is not None else self._data
        if model is None or not self.due(epoch):
            return
        if data is None:
            raise RuntimeError(
                "method 'gblending' estimates its weights on the training and validation "
                "splits: pass the epoch data to setup / on_epoch_start"
            )
        self.estimate(model, data)
        self.estimated_at = epoch

    def estimate(self, model: MultimodalModel, data) -> torch.Tensor:
        """Train a copy per head and set ``self.weights`` (see the module docstring)."""
        if not self.heads:
            self.heads = [*model.modalities, FUSED]
        if self._recipe is None:
            self._recipe = optimizer_recipe(None)
        limit = self.estimate_batches
        train_pre = mean_losses(model, data.train_batches(limit=limit), self.heads)
        val_pre = mean_losses(model, data.val_batches(), self.heads)
        train_now, val_now = torch.empty_like(train_pre), torch.empty_like(val_pre)
        for index, head in enumerate(self.heads):
            replica = copy.deepcopy(model)
            for param in replica.parameters():
                param.grad = None
            params = [p for p in replica.parameters() if p.requires_grad]
            train_for(replica, params, data, self.super_epoch, self._recipe, _head_loss(head), limit)
            train_now[index] = mean_losses(replica, data.train_batches(limit=limit), [head])[0]
            val_now[index] = mean_losses(replica, data.val_batches(), [head])[0]
            del replica
        self.weights = blending_weights(train_pre, val_pre, train_now, val_now)
        for index, head in enumerate(self.heads):
            self._logs[f"weight/{head}"] = self.weights[index]
            self._logs[f"gain/{head}"] = val_pre[index] - val_now[index]
        return self.weights

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        if self.weights is None:  # not estimated yet (plain loop without epoch data): fused only
            return F.cross_entropy(output.logits, labels)
        heads = self.heads or [*output.unimodal_logits, FUSED]
        weights = self.weights.to(output.logits.device)
        losses = torch.stack([F.cross_entropy(head_logits(output, h), labels) for h in heads])
        for index, head in enumerate(heads):
            self._logs[f"weight/{head}"] = weights[index]
        return (weights * losses).sum()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.weights is not None:
            state.update(weights=self.weights.detach().cpu(), heads=list(self.heads), estimated_at=self.estimated_at)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "weights" in state:
            self.weights = torch.as_tensor(state["weights"]).float()
            self.heads = list(state["heads"])
            self.estimated_at = state.get("estimated_at")

    def __repr__(self) -> str:
        return (
            f"GBlending(super_epoch={self.super_epoch}, mode={self.mode!r}, estimate_batches={self.estimate_batches})"
        )


def _head_loss(head: str):
    def loss(model: MultimodalModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(head_logits(model(batch), head), batch["label"])

    return loss
