"""``mbsd``: self-distillation from the stronger to the weaker modality (MBSD, cited by
BalanceBenchmark as Liu et al., 2023), METHODS.md §7.8.

For every pair of modalities (a, b) and every sample, with true-class probabilities
``p_a = softmax(z_a)[y]`` and ``p_b``, the sample weight is ``w = |p_a - p_b|`` when at least one
of the two predicts the label and 0 otherwise. The stronger modality's true-class probability
``p_s = max(p_a, p_b)`` teaches the weaker ``p_w = min(p_a, p_b)`` through the Bernoulli KL
divergence ``KL(p_s || p_w)`` (teacher detached), and a representation-similarity term pulls the
two modalities' logits together: ``RS = mean_k (z_a,k - z_b,k)^2``. The loss, inside the
modulation window, is ``CE(z, y) + sum_m CE(z_m, y) + mean_pairs mean_i w_i (RS_i + KL_i)``;
outside it, ``CE(z, y)``. Vectorised (``gather``, ``maximum``/``minimum``), no host
synchronisation. ``distill='balancemm'``, ``detach_weights=False`` and ``similarity='probs'``
(three modalities) reproduce BalanceMM's terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import Literal

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput
from .base import Method
from .heads import NeedsSplitHead
from .modulation import ModulationWindow
from .registry import register_method


def true_class_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_y, log(1 - p_y))`` per sample, both computed stably from the logits."""
    log_all = torch.logsumexp(logits, dim=1)
    log_p = logits.gather(1, labels.view(-1, 1)).squeeze(1) - log_all
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    log_not = torch.logsumexp(others, dim=1) - log_all
    return log_p, log_not


def pair_terms(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    labels: torch.Tensor,
    similarity: str = "logits",
    distill: str = "bernoulli_kl",
    detach_weights: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w, RS, KL)`` per sample for one pair of modalities."""
    log_pa, log_not_a = true_class_log_probs(z_a, labels)
    log_pb, log_not_b = true_class_log_probs(z_b, labels)
    p_a, p_b = log_pa.exp(), log_pb.exp()
    either_right = (z_a.argmax(1) == labels) | (z_b.argmax(1) == labels)
    weights = torch.where(either_right, (p_a - p_b).abs(), torch.zeros_like(p_a))
    if detach_weights:
        weights = weights.detach()
    if similarity == "logits":
        rs = (z_a - z_b).pow(2).mean(1)
    else:
        rs = (F.softmax(z_a, 1) - F.softmax(z_b, 1)).pow(2).mean(1)
    a_stronger = p_a >= p_b
    if distill == "balancemm":
        # BalanceMM: F.kl_div(p_s, p_w) on probabilities = p_w * (log p_w - p_s); not a divergence.
        p_s, p_w = torch.maximum(p_a, p_b), torch.minimum(p_a, p_b)
        kl = torch.xlogy(p_w, p_w) - p_w * p_s
    else:
        # KL(Bernoulli(p_s) || Bernoulli(p_w)); the stronger modality is the (detached) teacher.
        log_s = torch.where(a_stronger, log_pa, log_pb).detach()
        log_not_s = torch.where(a_stronger, log_not_a, log_not_b).detach()
        log_w = torch.where(a_stronger, log_pb, log_pa)
        log_not_w = torch.where(a_stronger, log_not_b, log_not_a)
        kl = log_s.exp() * (log_s - log_w) + log_not_s.exp() * (log_not_s - log_not_w)
    return weights, rs, kl


def mbsd_regulariser(
    unimodal_logits: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    similarity: str = "logits",
    distill: str = "bernoulli_kl",
    detach_weights: bool = True,
) -> dict[str, torch.Tensor]:
    """``{"rs", "kl", "weight"}``: the weighted terms averaged over samples, then over pairs, and
    the mean sample weight."""
    rs_terms, kl_terms, weight_means = [], [], []
    for a, b in combinations(unimodal_logits, 2):
        weights, rs, kl = pair_terms(
            unimodal_logits[a], unimodal_logits[b], labels, similarity, distill, detach_weights
        )
        rs_terms.append((weights * rs).mean())
        kl_terms.append((weights * kl).mean())
        weight_means.append(weights.detach().mean())
    return {
        "rs": torch.stack(rs_terms).mean(),
        "kl": torch.stack(kl_terms).mean(),
        "weight": torch.stack(weight_means).mean(),
    }


@register_method
class MBSD(NeedsSplitHead, ModulationWindow, Method):
    name = "mbsd"
    min_modalities = 2

    def __init__(self, modulation_starts: int = 0, modulation_ends: int = 80,
                 similarity: Literal["logits", "probs"] = "logits",
                 distill: Literal["bernoulli_kl", "balancemm"] = "bernoulli_kl",
                 detach_weights: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self.similarity, self.distill, self.detach_weights = similarity, distill, detach_weights

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        loss = F.cross_entropy(output.logits, labels)
        if not self.in_window():
            return loss
        for logits in output.unimodal_logits.values():
            loss = loss + F.cross_entropy(logits, labels)
        terms = mbsd_regulariser(output.unimodal_logits, labels, self.similarity, self.distill, self.detach_weights)
        self._logs.update({"rs": terms["rs"].detach(), "kl": terms["kl"].detach(), "weight": terms["weight"]})
        return loss + terms["rs"] + terms["kl"]

    def __repr__(self) -> str:
        return (
            f"MBSD(window=[{self.modulation_starts}, {self.modulation_ends}], similarity={self.similarity!r}, "
            f"distill={self.distill!r}, detach_weights={self.detach_weights})"
        )
