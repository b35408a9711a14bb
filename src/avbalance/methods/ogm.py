"""``ogm``: On-the-fly Gradient Modulation (Peng et al., CVPR 2022), METHODS.md §7.1.

Per step, each modality's score is ``s_m = sum_i softmax(z_m)_i[y_i]`` (its per-modality logits
from the same forward pass). With ``rho_m = s_m / mean_{n != m} s_n`` (for two modalities the
official ``s_a / s_v``), the modality ahead is slowed::

    k_m = 1 - tanh(alpha * rho_m)   if rho_m > 1   else 1

and inside the modulation window ``[modulation_starts, modulation_ends]`` (epochs, inclusive) the
gradient of every selected tensor of encoder m is multiplied by ``k_m`` after backward
(``modulate_via="grad"``), or that tensor's parameter update is (``"lr"``: Adam-like optimizers
cancel a gradient scale; see :mod:`.update_scaling`). ``"auto"`` (default): ``grad`` for SGD, ``lr``
for adaptive optimizers.

Everything stays on the device (no ``.item()``, no Python loop over the batch). Under DDP the
scores are summed over all ranks before the coefficients are derived, so every replica applies
the same coefficients; with gradient accumulation the scores of all micro-batches of the step
are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .distributed import all_reduce_sum
from .modulation import ModulationWindow
from .registry import register_method
from .update_scaling import ModulateVia, ModulationTarget

TensorSelection = Literal["auto", "conv", "weights", "all"]


def modality_scores(unimodal_logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """``s_m = sum_i softmax(z_m)_i[y_i]`` for every modality, stacked in mapping order: ``(M,)``."""
    return torch.stack(
        [
            F.softmax(logits.detach().float(), dim=1).gather(1, labels.view(-1, 1)).sum()
            for logits in unimodal_logits.values()
        ]
    )


def score_ratios(scores: torch.Tensor) -> torch.Tensor:
    """``rho_m = s_m / mean_{n != m} s_n``; 0/0 counts as parity (1)."""
    count = scores.numel()
    others = (scores.sum() - scores) / (count - 1)
    return torch.nan_to_num(scores / others, nan=1.0)


def coefficients_from_ratios(ratios: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(ratios > 1, 1 - torch.tanh(alpha * ratios), torch.ones_like(ratios))


def ogm_coefficients(
    unimodal_logits: Mapping[str, torch.Tensor], labels: torch.Tensor, alpha: float
) -> dict[str, torch.Tensor]:
    """OGM's modulation coefficient of every modality (0-d device tensors), from one batch."""
    if len(unimodal_logits) < 2:
        raise ValueError("OGM needs at least two modalities")
    ratios = score_ratios(modality_scores(unimodal_logits, labels))
    return dict(zip(unimodal_logits, coefficients_from_ratios(ratios, alpha)))


def mostly_convolutional(module: torch.nn.Module) -> bool:
    """True when convolution kernels (>= 3-D) hold most elements of the trainable weight tensors."""
    matrices = [p.numel() for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    kernels = [p.numel() for p in module.parameters() if p.requires_grad and p.dim() >= 3]
    return 2 * sum(kernels) > sum(matrices)


def select_tensors(module: torch.nn.Module, selection: TensorSelection) -> list[torch.nn.Parameter]:
    """The trainable parameters of ``module`` to modulate: ``conv`` = convolution kernels (>= 3-D, the
    official choice), ``weights`` = every tensor with >= 2 dimensions, ``all`` = every parameter;
    ``auto`` = ``conv`` for a convolutional encoder (kernels hold most of its weights: the ResNets),
    else ``weights`` (transformers, RNNs, MLPs, a ViT whose one convolution embeds the patches)."""
    if selection == "auto":
        selection = "conv" if mostly_convolutional(module) else "weights"
    minimum_dims = {"conv": 3, "weights": 2, "all": 0}[selection]
    return [p for p in module.parameters() if p.requires_grad and p.dim() >= minimum_dims]


def modulated_tensors(
    model: MultimodalModel, selection: TensorSelection, method: str
) -> dict[str, list[torch.nn.Parameter]]:
    """Every modality's selected tensors. An encoder with trainable parameters of which none is
    selected is a one-line ConfigError; a frozen encoder (nothing trainable) selects nothing."""
    groups = {m: select_tensors(model.encoders[m], selection) for m in model.modalities}
    for modality, params in groups.items():
        trainable = any(p.requires_grad for p in model.encoders[modality].parameters())
        if trainable and not params:
            raise ConfigError(
                f"method {method!r}: modulate={selection!r} selects no tensor of the {modality} encoder; "
                f"use modulate='auto', 'weights' or 'all'"
            )
    return groups


@register_method
class OGM(ModulationTarget, ModulationWindow, Method):
    name = "ogm"
    min_modalities = 2
    scales_gradients = True
    add_noise = False

    def __init__(self, alpha: float = 0.1, modulation_starts: int = 0, modulation_ends: int = 50,
                 modulate: TensorSelection = "auto", modulate_via: ModulateVia = "auto") -> None:  # fmt: skip
        super().__init__()
        self.init_target(modulate_via)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if modulation_ends < modulation_starts:
            raise ValueError(f"modulation_ends ({modulation_ends}) is before modulation_starts ({modulation_starts})")
        self.alpha, self.modulate = alpha, modulate
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self._pending_scores: torch.Tensor | None = None
        self._groups: dict[str, list[torch.nn.Parameter]] | None = None

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        scores = modality_scores(output.unimodal_logits, batch["label"])
        self._pending_scores = scores if self._pending_scores is None else self._pending_scores + scores
        return super().loss(output, batch)

    def discard_step(self) -> None:
        self._pending_scores = None
        self.update_scaler.scale_next_step(None)

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        self.choose_target(optimizer)
        super().setup(model, optimizer, data)
        self._groups = None  # selected afresh for this model
        self.attach_updates(optimizer, self._tensor_groups(model), self.in_window)

    def _tensor_groups(self, model: MultimodalModel) -> dict[str, list[torch.nn.Parameter]]:
        if self._groups is None:
            self._groups = modulated_tensors(model, self.modulate, self.name)
        return self._groups

    def after_backward(
        self, model: MultimodalModel, output: ModelOutput | None = None, batch: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        scores = self._pending_scores
        self._pending_scores = None
        if scores is None:  # the loss was computed outside this method
            scores = modality_scores(output.unimodal_logits, batch["label"])
        ratios = score_ratios(all_reduce_sum(scores))
        modulating = self.in_window()
        coefficients = coefficients_from_ratios(ratios, self.alpha) if modulating else torch.ones_like(ratios)
        for index, modality in enumerate(model.modalities):
            self._logs[f"ratio/{modality}"] = ratios[index]
            self._logs[f"coeff/{modality}"] = coefficients[index]
        scales_updates = self.scales_updates
        self.update_scaler.scale_next_step(
            dict(zip(model.modalities, coefficients)) if modulating and scales_updates else None
        )
        if not modulating:
            return
        for index, params in enumerate(self._tensor_groups(model).values()):
            grads = [p.grad for p in params if p.grad is not None]
            if grads and scales_updates:
                self.perturb_gradients(grads)
            elif grads:
                self.modulate_gradients(grads, coefficients[index])

    def modulate_gradients(self, grads: list[torch.Tensor], coefficient: torch.Tensor) -> None:
        torch._foreach_mul_(grads, coefficient)

    def perturb_gradients(self, grads: list[torch.Tensor]) -> None:
        """What is left on the gradients when the coefficient goes to the update: nothing for OGM."""

    def state_dict(self) -> dict:
        return {**super().state_dict(), "alpha": self.alpha}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, window=[{self.modulation_starts}, "
            f"{self.modulation_ends}], modulate={self.modulate!r}, modulate_via={self.modulate_via!r})"
        )
