"""``lfm``: learning the modality gap dynamically (Yang, Wan, Jiang, Xu, NeurIPS 2024), METHODS.md §7.12.

The supervised loss is blended with an unsupervised cross-modal alignment loss,
``L = (1 - a) L_cls + a A``. ``L_cls = CE(z, y) + sum_m CE(z_m, y)`` (the official learning-based
script; ``unimodal_ce=False`` keeps only the fused term) and ``A`` is the mean over modality pairs
of a symmetric InfoNCE between the L2-normalised encoder features (temperature 0.07, the paper's
contrastive term), or of the Jensen-Shannon divergence between the per-modality predictions
(``alignment='js'``, BalanceMM's prediction-level term computed as a true JS divergence).

The weight ``a`` of the alignment term starts high and moves each epoch:

* ``heuristic``: ``a = clip(exp(-decay * epoch), 0.05, 0.95)``;
* ``learned`` (the official learning-based strategy): at the start of every epoch, on a fixed set
  of ``hvp_samples`` validation samples, ``delta`` is the mean over the first parameter tensor (the
  first encoder's stem) of the Hessian-vector product ``grad_theta <grad_theta L_tot, g_cls>`` with
  ``g_cls = grad_theta L_cls`` held constant; ``a <- clip(a - lr_alpha * delta, 0.05, 0.95)``, and
  ``lr_alpha`` is halved at epochs 20, 40, ... The forward runs in train mode, as in the official
  code, but BatchNorm running statistics are restored afterwards; under DDP ``delta`` is averaged
  over ranks.

Pre-trained parts: ``pretrained`` lists avbalance checkpoints to initialise from (a multimodal run,
or unimodal runs from ``avbalance train --modalities m``); otherwise ``pretrain_epochs`` > 0 runs an
automatic unimodal pre-training stage before training.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from ._training import (SPLIT_HEADS, check_param, initialise_from, model_mode, preserved_buffers,
                        world_size)
from .base import Method
from .distributed import all_reduce_sum
from .registry import register_method

MIN_WEIGHT, MAX_WEIGHT = 0.05, 0.95


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two modalities' L2-normalised features (positives: same sample)."""
    a, b = F.normalize(first, dim=1), F.normalize(second, dim=1)
    logits = a @ b.t() / temperature
    targets = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def js_divergence(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between ``softmax(first)`` and ``softmax(second)``, batch mean,
    ``1/2 [KL(p || m) + KL(q || m)]`` with ``m = (p + q) / 2``, from log-probabilities."""
    log_p, log_q = F.log_softmax(first, dim=1), F.log_softmax(second, dim=1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(1)
    return ((kl_p + kl_q) / 2).mean()


def heuristic_weight(epoch: int, decay: float) -> float:
    return min(max(math.exp(-decay * epoch), MIN_WEIGHT), MAX_WEIGHT)


@register_method
class LFM(Method):
    name = "lfm"
    min_modalities = 2

    def __init__(self, weighting: Literal["learned", "heuristic"] = "learned",
                 alignment: Literal["contrastive", "js"] = "contrastive", temperature: float = 0.07,
                 unimodal_ce: bool = True, init_weight: float = 0.95, lr_alpha: float = 1e-4,
                 halve_every: int = 20, decay: float = 0.3, hvp_samples: int = 8,
                 pretrained: list[str] | None = None, pretrain_epochs: int = 0) -> None:
        super().__init__()
        check_param(temperature > 0, self.name, f"temperature must be > 0, got {temperature}")
        check_param(0 <= init_weight <= 1, self.name, f"init_weight must be in [0, 1], got {init_weight}")
        check_param(halve_every >= 1, self.name, f"halve_every must be >= 1, got {halve_every}")
        check_param(hvp_samples >= 1, self.name, f"hvp_samples must be >= 1, got {hvp_samples}")
        check_param(pretrain_epochs >= 0, self.name, f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
        self.weighting, self.alignment, self.temperature = weighting, alignment, temperature
        self.unimodal_ce, self.init_weight, self.lr_alpha = unimodal_ce, init_weight, lr_alpha
        self.halve_every, self.decay, self.hvp_samples = halve_every, decay, hvp_samples
        self.pretrained, self.pretrain_epochs = list(pretrained or []), pretrain_epochs
        self.weight = init_weight if weighting == "learned" else heuristic_weight(0, decay)
        self.current_lr_alpha = lr_alpha
        self.updated_at: int | None = None
        self._restored = False
        self._val_batch: dict[str, torch.Tensor] | None = None
        self._weight_tensor: torch.Tensor | None = None

    # -- checks ----------------------------------------------------------------------------------
    def needs_split_head(self) -> bool:
        return self.unimodal_ce or self.alignment == "js" or self.pretrain_epochs > 0

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.check_head(spec["fusion"])
        if self.alignment == "contrastive":
            from ..models import build_encoder

            self.check_dims({m: build_encoder(**s).out_dim for m, s in spec["encoders"].items()})
        return spec

    def check_head(self, fusion: str) -> None:
        if self.needs_split_head() and fusion not in SPLIT_HEADS:
            uses = [why for why, used in (("unimodal_ce", self.unimodal_ce), ("alignment='js'", self.alignment == "js"),
                                          ("pretrain_epochs", self.pretrain_epochs > 0)) if used]
            raise ValueError(f"method 'lfm' with {', '.join(uses)} needs per-modality logits of one modality each: "
                             f"use fusion sum, concat or cosine, or unimodal_ce=false with the contrastive "
                             f"alignment, not {fusion!r}")

    def check_dims(self, dims: Mapping[str, int]) -> None:
        if len(set(dims.values())) > 1:
            sizes = ", ".join(f"{m} {d}" for m, d in dims.items())
            raise ValueError(f"method 'lfm': the contrastive alignment compares features of equal size, got {sizes}; "
                             f"give the encoders the same width or use alignment='js'")

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        self.check_head(model.head.name)
        if self.alignment == "contrastive":
            self.check_dims(_feature_dims(model))
        if not self._restored:  # a resumed run already has its (pre-)trained weights
            initialise_from(model, data, optimizer, self.name, self.pretrained, self.pretrain_epochs)
        if data is not None and self.weighting == "learned" and self._val_batch is None:
            self._val_batch = self.fixed_val_batch(data)

    def fixed_val_batch(self, data) -> dict[str, torch.Tensor]:
        batch = next(iter(data.val_batches(limit=1)))
        return {k: v[: self.hvp_samples] for k, v in batch.items() if isinstance(v, torch.Tensor)}

    # -- the objective ---------------------------------------------------------------------------
    def objective(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_cls, A)``."""
        classification = F.cross_entropy(output.logits, labels)
        if self.unimodal_ce:
            for logits in output.unimodal_logits.values():
                classification = classification + F.cross_entropy(logits, labels)
        if self.alignment == "contrastive":
            terms = [info_nce(output.features[a], output.features[b], self.temperature)
                     for a, b in combinations(output.features, 2)]
        else:
            terms = [js_divergence(output.unimodal_logits[a], output.unimodal_logits[b])
                     for a, b in combinations(output.unimodal_logits, 2)]
        return classification, torch.stack(terms).mean()

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        classification, alignment = self.objective(output, batch["label"])
        if self._weight_tensor is None or self._weight_tensor.device != output.logits.device:
            self._weight_tensor = torch.tensor(self.weight, device=output.logits.device)
        self._logs.update({"weight/alignment": self._weight_tensor, "loss/alignment": alignment.detach(),
                           "loss/cls": classification.detach()})
        return (1 - self.weight) * classification + self.weight * alignment

    # -- the weight ------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, model=None, data=None) -> None:
        super().on_epoch_start(epoch, model, data)
        if self.weighting == "heuristic":
            self.set_weight(heuristic_weight(epoch, self.decay))
            return
        if model is None or self.updated_at == epoch:
            return
        if self._val_batch is None:
            if data is None:
                return  # no validation data: the weight stays where it is
            self._val_batch = self.fixed_val_batch(data)
        if epoch > 0 and epoch % self.halve_every == 0:
            self.current_lr_alpha /= 2
        delta = self.hypergradient(model, self._val_batch)
        self.set_weight(min(max(self.weight - self.current_lr_alpha * delta, MIN_WEIGHT), MAX_WEIGHT))
        self.updated_at = epoch

    def set_weight(self, weight: float) -> None:
        self.weight = float(weight)
        self._weight_tensor = None

    def hypergradient(self, model: MultimodalModel, batch: Mapping[str, torch.Tensor]) -> float:
        """``delta``: the mean over the first parameter tensor of ``H_tot g_cls`` (see the module
        docstring), averaged over ranks."""
        params = [p for p in model.parameters() if p.requires_grad]
        with model_mode(model, True), preserved_buffers(model), torch.enable_grad():
            classification, alignment = self.objective(model(batch), batch["label"])
            total = (1 - self.weight) * classification + self.weight * alignment
            grads_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            grads_cls = torch.autograd.grad(classification, params, retain_graph=True, allow_unused=True)
            pairs = [(gt, gc) for gt, gc in zip(grads_total, grads_cls)
                     if gt is not None and gc is not None and gt.requires_grad]
            hvp = torch.autograd.grad([gt for gt, _ in pairs], params[0], grad_outputs=[gc for _, gc in pairs],
                                      allow_unused=True)[0] if pairs else None
        delta = hvp.mean() if hvp is not None else params[0].new_zeros(())
        delta = all_reduce_sum(delta.detach()) / world_size()
        self._logs["delta"] = delta
        return float(delta)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "weight": self.weight, "lr_alpha": self.current_lr_alpha,
                "updated_at": self.updated_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "weight" in state:
            self.set_weight(state["weight"])
            self.current_lr_alpha = float(state.get("lr_alpha", self.lr_alpha))
            self.updated_at = state.get("updated_at")
        self._restored = True

    def __repr__(self) -> str:
        return (f"LFM(weighting={self.weighting!r}, alignment={self.alignment!r}, weight={self.weight:.4f}, "
                f"unimodal_ce={self.unimodal_ce})")


def _feature_dims(model: MultimodalModel) -> dict[str, int]:
    return {m: int(getattr(encoder, "out_dim")) for m, encoder in model.encoders.items()}
