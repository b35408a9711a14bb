"""``lfm``: learning the modality gap dynamically (Yang, Wan, Jiang, Xu, NeurIPS 2024), METHODS.md §7.12.

The supervised loss is blended with an unsupervised cross-modal alignment loss; by default exactly
as the official release (njustkmg/NeurIPS24-LFM, ``Crema_epoch.py`` and ``Crema_epoch_learnable.py``)::

    L = scale * ((1 - a) L_cls + a A),   scale = 2
    L_cls = CE(mean_m z_m, y)                          (classification='mean'; 'fused': CE(z, y))
    A = mean over modality pairs of D(p_m, p_n),  D(p, q) = 1/2 [KL(r || p) + KL(r || q)],  r = (p + q) / 2

``p_m = softmax(z_m)``; ``D`` is the official ``Alignment`` (``F.kl_div(p.log(), r)``, batch mean),
computed here from ``log_softmax``. ``unimodal_ce=True`` adds ``sum_m CE(z_m, y)`` to ``L_cls``;
``alignment='contrastive'`` replaces ``D`` by the paper's contrastive term, a symmetric InfoNCE
between the L2-normalised encoder features (temperature ``temperature``).

The weight ``a`` of the alignment term moves each epoch:

* ``fitted`` (official ``Crema_epoch.py``): ``1 - a`` is the official degree-5 polynomial of the
  epoch fitted to a learning-based run on CREMA-D (``a`` = 0.80 at epoch 0, 0.56 at 50, 0.08 at
  199); it is held at its epoch-199 value after the fitted 200 epochs;
* ``learned`` (official ``Crema_epoch_learnable.py``): ``a`` starts at ``init_weight``; at the start
  of every epoch, on a fixed set of ``hvp_samples`` validation samples, ``delta`` is the mean over
  the first parameter tensor (the first encoder's stem) of the Hessian-vector product
  ``grad_theta <grad_theta L_tot, g_cls>`` with ``L_tot = (1 - a) L_cls + a A`` and
  ``g_cls = grad_theta L_cls`` held constant; ``a <- clip(a - lr_alpha * delta, 0.05, 0.95)``, and
  ``lr_alpha`` is halved at epochs 20, 40, ... As in the official script the forward runs in train
  mode at epoch 0 and in eval mode afterwards (the script calls it after its evaluation pass);
  BatchNorm running statistics are restored afterwards; under DDP ``delta`` is averaged over ranks;
* ``heuristic`` (not in the official release): ``a = clip(exp(-decay * epoch), 0.05, 0.95)``.

Pre-trained parts: ``pretrained`` lists avbalance checkpoints to initialise from (a multimodal run,
or unimodal runs from ``avbalance train --modalities m``); otherwise ``pretrain_epochs`` > 0 runs an
automatic unimodal pre-training stage before training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .distributed import all_reduce_sum, world_size
from .heads import SPLIT_HEADS
from .modes import model_mode, preserved_buffers
from .pretraining import initialise_from
from .registry import check_param, register_method

MIN_WEIGHT, MAX_WEIGHT = 0.05, 0.95
# Official ``getAlpha_Learnable_Fitted``: the classification weight ``1 - a`` as a polynomial of the
# epoch (coefficients of epoch**0 .. epoch**5), fitted over the 200 epochs of the CREMA-D script.
FITTED_CLS_COEFFICIENTS = (
    2.04623704e-01,
    3.35472727e-03,
    1.22989557e-04,
    -2.92947416e-06,
    2.23835486e-08,
    -5.39717505e-11,
)
FITTED_LAST_EPOCH = 199


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two modalities' L2-normalised features (positives: same sample)."""
    a, b = F.normalize(first, dim=1), F.normalize(second, dim=1)
    logits = a @ b.t() / temperature
    targets = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def prediction_divergence(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The official alignment ``1/2 [KL(r || p) + KL(r || q)]`` with ``p = softmax(first)``,
    ``q = softmax(second)``, ``r = (p + q) / 2``, batch mean, from log-probabilities (the official
    ``log(softmax)`` reaches ``-inf`` when a probability underflows)."""
    log_p, log_q = F.log_softmax(first, dim=1), F.log_softmax(second, dim=1)
    log_r = torch.logaddexp(log_p, log_q) - math.log(2.0)
    r = log_r.exp()
    return ((r * (log_r - log_p)).sum(1) + (r * (log_r - log_q)).sum(1)).mean() / 2


def fitted_weight(epoch: int) -> float:
    """The alignment weight ``a`` of the official fitted schedule at ``epoch`` (held after epoch 199)."""
    epoch = min(epoch, FITTED_LAST_EPOCH)
    return 1.0 - sum(c * epoch**power for power, c in enumerate(FITTED_CLS_COEFFICIENTS))


def heuristic_weight(epoch: int, decay: float) -> float:
    return min(max(math.exp(-decay * epoch), MIN_WEIGHT), MAX_WEIGHT)


@register_method
class LFM(Method):
    name = "lfm"
    min_modalities = 2

    def __init__(self, weighting: Literal["fitted", "learned", "heuristic"] = "fitted",
                 alignment: Literal["divergence", "contrastive"] = "divergence",
                 classification: Literal["mean", "fused"] = "mean", unimodal_ce: bool = False, scale: float = 2.0,
                 temperature: float = 0.07, init_weight: float = 0.95, lr_alpha: float = 1e-4, halve_every: int = 20,
                 decay: float = 0.3, hvp_samples: int = 8, pretrained: list[str] | None = None,
                 pretrain_epochs: int = 0) -> None:  # fmt: skip
        super().__init__()
        check_param(scale > 0, self.name, f"scale must be > 0, got {scale}")
        check_param(temperature > 0, self.name, f"temperature must be > 0, got {temperature}")
        check_param(0 <= init_weight <= 1, self.name, f"init_weight must be in [0, 1], got {init_weight}")
        check_param(halve_every >= 1, self.name, f"halve_every must be >= 1, got {halve_every}")
        check_param(hvp_samples >= 1, self.name, f"hvp_samples must be >= 1, got {hvp_samples}")
        check_param(pretrain_epochs >= 0, self.name, f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
        self.weighting, self.alignment, self.classification = weighting, alignment, classification
        self.unimodal_ce, self.scale, self.temperature = unimodal_ce, scale, temperature
        self.init_weight, self.lr_alpha = init_weight, lr_alpha
        self.halve_every, self.decay, self.hvp_samples = halve_every, decay, hvp_samples
        self.pretrained, self.pretrain_epochs = list(pretrained or []), pretrain_epochs
        self.weight = self.scheduled_weight(0) if weighting != "learned" else init_weight
        self.current_lr_alpha = lr_alpha
        self.updated_at: int | None = None
        self._restored = False
        self._val_batch: dict[str, torch.Tensor] | None = None
        self._weight_tensor: torch.Tensor | None = None

    # -- checks ----------------------------------------------------------------------------------
    def split_head_uses(self) -> list[str]:
        """The settings that need per-modality logits of one modality each."""
        uses = (
            ("classification='mean'", self.classification == "mean"),
            ("unimodal_ce", self.unimodal_ce),
            ("alignment='divergence'", self.alignment == "divergence"),
            ("pretrain_epochs", self.pretrain_epochs > 0),
        )
        return [why for why, used in uses if used]

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.check_head(spec["fusion"])
        if self.alignment == "contrastive":
            from ..models import build_encoder

            self.check_dims({m: build_encoder(**s).out_dim for m, s in spec["encoders"].items()})
        return spec

    def check_head(self, fusion: str) -> None:
        uses = self.split_head_uses()
        if uses and fusion not in SPLIT_HEADS:
            raise ValueError(
                f"method 'lfm' with {', '.join(uses)} needs per-modality logits of one modality each: "
                f"use fusion sum, concat or cosine, or classification='fused' with "
                f"alignment='contrastive', not {fusion!r}"
            )

    def check_dims(self, dims: Mapping[str, int]) -> None:
        if len(set(dims.values())) > 1:
            sizes = ", ".join(f"{m} {d}" for m, d in dims.items())
            raise ValueError(
                f"method 'lfm': the contrastive alignment compares features of equal size, got {sizes}; "
                f"give the encoders the same width or use alignment='divergence'"
            )

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
        if self.classification == "mean":
            classification = F.cross_entropy(torch.stack(list(output.unimodal_logits.values())).mean(0), labels)
        else:
            classification = F.cross_entropy(output.logits, labels)
        if self.unimodal_ce:
            for logits in output.unimodal_logits.values():
                classification = classification + F.cross_entropy(logits, labels)
        if self.alignment == "contrastive":
            terms = [
                info_nce(output.features[a], output.features[b], self.temperature)
                for a, b in combinations(output.features, 2)
            ]
        else:
            terms = [
                prediction_divergence(output.unimodal_logits[a], output.unimodal_logits[b])
                for a, b in combinations(output.unimodal_logits, 2)
            ]
        return classification, torch.stack(terms).mean()

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        classification, alignment = self.objective(output, batch["label"])
        if self._weight_tensor is None or self._weight_tensor.device != output.logits.device:
            self._weight_tensor = torch.tensor(self.weight, device=output.logits.device)
        self._logs.update(
            {
                "weight/alignment": self._weight_tensor,
                "loss/alignment": alignment.detach(),
                "loss/cls": classification.detach(),
            }
        )
        return self.scale * ((1 - self.weight) * classification + self.weight * alignment)

    # -- the weight ------------------------------------------------------------------------------
    def scheduled_weight(self, epoch: int) -> float:
        return fitted_weight(epoch) if self.weighting == "fitted" else heuristic_weight(epoch, self.decay)

    def on_epoch_start(self, epoch: int, model=None, data=None) -> None:
        super().on_epoch_start(epoch, model, data)
        if self.weighting != "learned":
            self.set_weight(self.scheduled_weight(epoch))
            return
        if model is None or self.updated_at == epoch:
            return
        if self._val_batch is None:
            if data is None:
                return  # no validation data: the weight stays where it is
            self._val_batch = self.fixed_val_batch(data)
        if epoch > 0 and epoch % self.halve_every == 0:
            self.current_lr_alpha /= 2
        delta = self.hypergradient(model, self._val_batch, train_mode=epoch == 0)
        self.set_weight(min(max(self.weight - self.current_lr_alpha * delta, MIN_WEIGHT), MAX_WEIGHT))
        self.updated_at = epoch

    def set_weight(self, weight: float) -> None:
        self.weight = float(weight)
        self._weight_tensor = None

    def hypergradient(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], train_mode: bool = True
    ) -> float:
        """``delta``: the mean over the first parameter tensor of ``H_tot g_cls`` (see the module
        docstring), averaged over ranks."""
        params = [p for p in model.parameters() if p.requires_grad]
        with model_mode(model, train_mode), preserved_buffers(model), torch.enable_grad():
            classification, alignment = self.objective(model(batch), batch["label"])
            total = (1 - self.weight) * classification + self.weight * alignment
            grads_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
            grads_cls = torch.autograd.grad(classification, params, retain_graph=True, allow_unused=True)
            pairs = [
                (gt, gc)
                for gt, gc in zip(grads_total, grads_cls)
                if gt is not None and gc is not None and gt.requires_grad
            ]
            hvp = (
                torch.autograd.grad(
                    [gt for gt, _ in pairs], params[0], grad_outputs=[gc for _, gc in pairs], allow_unused=True
                )[0]
                if pairs
                else None
            )
        delta = hvp.mean() if hvp is not None else params[0].new_zeros(())
        delta = all_reduce_sum(delta.detach()) / world_size()
        self._logs["delta"] = delta
        return float(delta)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "weight": self.weight,
            "lr_alpha": self.current_lr_alpha,
            "updated_at": self.updated_at,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "weight" in state:
            self.set_weight(state["weight"])
            self.current_lr_alpha = float(state.get("lr_alpha", self.lr_alpha))
            self.updated_at = state.get("updated_at")
        self._restored = True

    def __repr__(self) -> str:
        return (
            f"LFM(weighting={self.weighting!r}, alignment={self.alignment!r}, "
            f"classification={self.classification!r}, weight={self.weight:.4f}, unimodal_ce={self.unimodal_ce})"
        )


def _feature_dims(model: MultimodalModel) -> dict[str, int]:
    return {m: int(encoder.out_dim) for m, encoder in model.encoders.items()}
