"""``pmr``: Prototypical Modal Rebalance (Fan et al., CVPR 2023), METHODS.md §7.5.

At the start of every epoch each modality's class prototypes ``c_m,k`` are the mean encoder
features of class k over a random tenth of the training set, drawn afresh every epoch (eval mode,
no gradients), blended
with the previous ones by an EMA (``c <- (1 - momentum) c_new + momentum c_old``). Per step the
prototype logits ``q_m = -||h_m - c_m,k||`` give each modality a non-parametric classifier, its
score ``s_m = sum_i softmax(q_m)_i[y_i]`` and the ratio ``rho_m = s_m / mean_{n != m} s_n``
(``s_a / s_v`` for two modalities). The lagging modality gets the prototypical cross-entropy
``PCE_m = CE(q_m, y)`` and, during the first ``entropy_epochs`` epochs, the leading modality gets
the prototypical entropy regularisation (PER), which raises the entropy ``H(softmax(q_m))`` to
delay its premature convergence::

    L = CE(z, y) + alpha * sum_m beta_m PCE_m - mu * sum_m gamma_m H_m
    official code (default):  beta_m = [rho_m < 1],              gamma_m = [rho_m > 1],  mu = 0
    paper (Eqs. 10, 11, 13):  beta_m = clip(1/rho_m - 1, 0, 1),  gamma_m = clip(rho_m - 1, 0, 1),  mu = 0.01

The official rule is ``main_Prototype_grad.py`` of fanyunfeng-bit/Modal-Imbalance-PMR: the hard
switch with weight ``alpha`` on the lagging modality's PCE and no PER term. For two modalities the
paper rule is exactly Eqs. 11 and 13 (``gamma`` of one modality is ``beta`` of the other).

Prototypes use only encoder features, so every fusion head works. Prototype sums, class counts
and batch scores are summed over DDP ranks, so every rank uses the same prototypes and weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.model import ModelOutput, MultimodalModel
from .base import EpochData, Method
from .distributed import all_reduce_sum, rank_and_world
from .modes import model_mode
from .modulation import ModulationWindow
from .registry import register_method

# The PER weight of each rule when ``mu`` is not given: none in the official code, 1e-2 in the paper.
RULE_MU = {"official": 0.0, "paper": 0.01}


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``-||h_i - c_k||_2`` for every sample and class: ``(B, C)``, in float32."""
    squared = ((features.float().unsqueeze(1) - prototypes.float().unsqueeze(0)) ** 2).sum(-1)
    return -torch.sqrt(squared.clamp_min(1e-12))


def prototype_scores(logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """``s_m = sum_i softmax(q_m)_i[y_i]`` per modality: ``(M,)``."""
    return torch.stack(
        [F.softmax(q.detach().float(), dim=1).gather(1, labels.view(-1, 1)).sum() for q in logits.values()]
    )


def pmr_weights(
    scores: torch.Tensor, rule: Literal["official", "paper"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rho, beta, gamma)`` from the prototype scores ``(M,)``; ``rho_m = s_m / mean_{n != m} s_n``.
    ``beta`` weighs each modality's PCE (lagging modalities), ``gamma`` its PER term (leading ones)."""
    count = scores.numel()
    others = (scores.sum() - scores) / (count - 1)
    rho = torch.nan_to_num(scores / others, nan=1.0, posinf=1e6)
    if rule == "paper":
        beta = torch.clamp(1 / rho.clamp_min(1e-12) - 1, 0.0, 1.0)
        gamma = torch.clamp(rho - 1, 0.0, 1.0)
    else:
        beta = (rho < 1).to(scores.dtype)
        gamma = (rho > 1).to(scores.dtype)
    return rho, beta, gamma


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``H(softmax(logits)) = -sum_k p_k log p_k``."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums ``(C, D)`` and counts ``(C,)`` (one matrix product, no Python loop)."""
    one_hot = F.one_hot(labels, num_classes).to(features.dtype)
    return one_hot.t() @ features, one_hot.sum(0)


@register_method
class PMR(ModulationWindow, Method):
    name = "pmr"
    min_modalities = 2

    def __init__(self, alpha: float = 1.0, mu: float | None = None, entropy_epochs: int = 10,
                 rule: Literal["official", "paper"] = "official", momentum: float = 0.2, subset_fraction: float = 0.1,
                 modulation_starts: int = 0, modulation_ends: int = 100) -> None:  # fmt: skip
        super().__init__()
        if not 0 < subset_fraction <= 1:
            raise ConfigError(f"method 'pmr': subset_fraction must be in (0, 1], got {subset_fraction}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"method 'pmr': momentum must be in [0, 1), got {momentum}")
        if mu is not None and mu < 0:
            raise ConfigError(f"method 'pmr': mu must be >= 0, got {mu}")
        self.alpha, self.entropy_epochs, self.rule = alpha, entropy_epochs, rule
        self.mu = RULE_MU[rule] if mu is None else mu  # None: the rule's own PER weight
        self.momentum, self.subset_fraction = momentum, subset_fraction
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self.prototypes: dict[str, torch.Tensor] | None = None

    # -- prototypes --------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, model: MultimodalModel | None = None, data: EpochData | None = None) -> None:
        super().on_epoch_start(epoch, model, data)
        if model is None or data is None:
            if self.prototypes is None:
                raise RuntimeError(
                    "method 'pmr' computes prototypes from the training data: pass model and "
                    "data to on_epoch_start, or set prototypes first"
                )
            return
        fresh = self.compute_prototypes(model, data)
        # As the official script: the prototypes of the first two epochs are taken as computed
        # (the second replaces those of the untrained network), later ones are blended by the EMA.
        if self.prototypes is None or epoch < 2:
            self.prototypes = fresh
        else:
            self.prototypes = {
                m: (1 - self.momentum) * fresh[m] + self.momentum * self.prototypes[m].to(fresh[m]) for m in fresh
            }

    def compute_prototypes(self, model: MultimodalModel, data: EpochData) -> dict[str, torch.Tensor]:
        """Class means of every encoder's features over a random ``subset_fraction`` of the
        training set (this rank's shard, summed over ranks), in eval mode without gradients.
        A class absent from the subset keeps its previous prototype (the subset mean at first)."""
        _, world = rank_and_world()
        num_classes = model.head.num_classes
        budget = max(1, math.ceil(self.subset_fraction * data.num_train_samples() / world))
        modalities = list(model.modalities)
        sums = {m: torch.zeros(num_classes, model.head.dims[m], device=data.device) for m in modalities}
        counts = torch.zeros(num_classes, device=data.device)
        seen = 0
        with model_mode(model, False), torch.no_grad():
            for batch in data.train_batches(shuffle=True):
                features = model.encode(batch)
                labels = batch["label"]
                for m in modalities:
                    total, count = class_sums(features[m].float(), labels, num_classes)
                    sums[m] += total
                counts += F.one_hot(labels, num_classes).sum(0).float()
                seen += len(labels)
                if seen >= budget:
                    break
        flat = all_reduce_sum(torch.cat([counts] + [sums[m].reshape(-1) for m in modalities]))
        counts = flat[:num_classes]
        sums = dict(
            zip(
                modalities,
                (
                    chunk.view(num_classes, -1)
                    for chunk in flat[num_classes:].split([sums[m].numel() for m in modalities])
                ),
            )
        )
        present = (counts > 0).unsqueeze(1)
        prototypes = {}
        for m in modalities:
            means = sums[m] / counts.clamp_min(1).unsqueeze(1)
            if self.prototypes is not None:
                fallback = self.prototypes[m].to(means)
            else:
                fallback = (sums[m].sum(0) / counts.sum().clamp_min(1)).expand_as(means)
            prototypes[m] = torch.where(present, means, fallback)
        return prototypes

    # -- the loss ----------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        loss = F.cross_entropy(output.logits, labels)
        if self.prototypes is None:
            raise RuntimeError("method 'pmr' has no prototypes yet: on_epoch_start computes them")
        modalities = list(output.features)
        logits = {
            m: prototype_logits(output.features[m], self.prototypes[m].to(output.features[m].device))
            for m in modalities
        }
        scores = all_reduce_sum(prototype_scores(logits, labels))
        rho, beta, gamma = pmr_weights(scores, self.rule)
        for index, m in enumerate(modalities):
            self._logs[f"ratio/{m}"] = rho[index]
            self._logs[f"proto_acc/{m}"] = (logits[m].detach().argmax(1) == labels).float().mean()
        active = self.in_window()
        entropy_on = active and self.mu > 0 and self.epoch < self.entropy_epochs
        for index, m in enumerate(modalities):
            pce_weight = self.alpha * beta[index] if active else torch.zeros_like(beta[index])
            per_weight = self.mu * gamma[index] if entropy_on else torch.zeros_like(gamma[index])
            self._logs[f"pce_weight/{m}"] = pce_weight
            self._logs[f"per_weight/{m}"] = per_weight
            if active:
                loss = loss + pce_weight * F.cross_entropy(logits[m], labels)
            if entropy_on:
                loss = loss - per_weight * prediction_entropy(logits[m])
        return loss

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.prototypes is not None:
            state["prototypes"] = {m: c.detach().cpu() for m, c in self.prototypes.items()}
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if state.get("prototypes") is not None:
            self.prototypes = {m: torch.as_tensor(c) for m, c in state["prototypes"].items()}

    def __repr__(self) -> str:
        return f"PMR(alpha={self.alpha}, mu={self.mu}, rule={self.rule!r})"
