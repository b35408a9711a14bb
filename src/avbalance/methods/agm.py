"""``agm``: Adaptive Gradient Modulation (Li et al., ICCV 2023), METHODS.md §7.4.

Each modality's *mono-modal response* is its Shapley share of the fused logits, with ``f(S)`` the
fused logits when the inputs of the modalities outside ``S`` are zeroed and the empty coalition
worth 0: ``z~_m = sum_{S not containing m} |S|!(M-|S|-1)!/M! (f(S + m) - f(S))`` (for two
modalities ``z~_a = (f(av) - f(v) + f(a)) / 2``); the shares add up to ``f(all)``. With the score
``s_m`` = mean cross-entropy of ``z~_m`` (probabilities floored at 1e-8), the ratio
``r_m = exp(M/(M-1) (mean(s) - s_m))``, its running reference ``r^_m`` from the cumulative mean
``T_m`` of all previous scores, and the coefficient ``k_m = exp(alpha * min(r^_m - r_m, clip))``,
a modality doing better than its own history (``r_m > r^_m``) is slowed and a lagging one is sped
up. As in the official code, the loss is back-propagated through ``sum_m k_m-scaled z~_m`` (the
coalition passes run in eval mode and carry gradients: ``apply="shares"``); ``apply="encoders"``
instead runs them without gradients and multiplies encoder m's gradients by ``k_m`` after
backward (BalanceMM). When an entry of a head weight gradient leaves ``[-clip_grad, clip_grad]``
the global gradient norm is clipped to ``clip_grad``.

``modulate_via``: ``grad`` is the rule above; ``lr`` applies ``k_m`` to the update of encoder m's
selected tensors instead (:mod:`.update_scaling`), whatever ``apply`` says -- with every ``k = 1``
the shares add up to the fused logits, so the loss is then the plain cross-entropy and the
coalition passes run without gradients. ``auto`` (default): ``grad`` for SGD, ``lr`` for adaptive
optimizers (Adam, AdamW, ...), which cancel most of a gradient scale.

``preset`` fills the values not given: ``official`` is the audio-visual script of the authors'
release (lihong2303/AGM_ICCV2023, ``run/CREMAD_main.py``: ``alpha`` 1.0, the default of
``utils/config.py``; ``clip`` 10; head-gradient trigger and ``max_norm`` 1.0; shares), ``balancemm``
the BalanceMM re-implementation (``alpha`` 0.1, ``clip`` 7, ``clip_grad`` 5, encoder gradients scaled,
weight tensors only).

Scores are reduced over DDP ranks before the coefficients are derived; nothing leaves the device
during a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from math import factorial
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .coalitions import proper_coalitions, stacked_coalition_batch
from .distributed import all_reduce_sum
from .modes import model_mode
from .modulation import ModulationWindow
from .ogm import TensorSelection, modulated_tensors, select_tensors
from .registry import register_method
from .update_scaling import ModulateVia, ModulationTarget


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``k`` (a 0-d tensor) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(k)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (k,) = ctx.saved_tensors
        return grad * k.to(grad.dtype), None


def scale_gradient(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return _ScaleGradient.apply(x, k)


def coalition_logits(model: MultimodalModel, batch: Mapping[str, torch.Tensor]) -> dict[frozenset[str], torch.Tensor]:
    """``f(S)`` for every proper non-empty coalition ``S``, from one forward over the stacked
    zero-masked copies (gradients flow if enabled by the caller; the mode is the caller's)."""
    modalities = list(model.modalities)
    coalitions = proper_coalitions(modalities)
    if not coalitions:
        return {}
    size = len(batch["label"])
    logits = model(stacked_coalition_batch(batch, modalities, coalitions)).logits
    return dict(zip(coalitions, logits.split(size)))


def shapley_responses(
    full: torch.Tensor, partial: Mapping[frozenset[str], torch.Tensor], modalities: tuple[str, ...] | list[str]
) -> dict[str, torch.Tensor]:
    """Each modality's Shapley share of the fused logits with ``v(empty) = 0`` (official AGM):
    ``z~_m = sum_{S without m} |S|!(M-|S|-1)!/M! (v(S + m) - v(S))``; ``sum_m z~_m = full``."""
    count = len(modalities)
    everyone = frozenset(modalities)

    def value(coalition: frozenset[str]) -> torch.Tensor | None:
        if not coalition:
            return None
        return full if coalition == everyone else partial[coalition]

    responses = {}
    for m in modalities:
        others = [n for n in modalities if n != m]
        share = torch.zeros_like(full)
        for size in range(count):
            weight = factorial(size) * factorial(count - size - 1) / factorial(count)
            for members in combinations(others, size):
                coalition = frozenset(members)
                with_m, without = value(coalition | {m}), value(coalition)
                share = share + weight * (with_m if without is None else with_m - without)
        responses[m] = share
    return responses


def response_losses(responses: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """``sum_i -log max(softmax(z~_m)_i[y_i], 1e-8)`` per modality, ``(M,)`` (a sum, not a mean)."""
    rows = []
    for logits in responses.values():
        probability = F.softmax(logits.detach().float(), dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
        rows.append(-torch.log(probability.clamp_min(1e-8)).sum())
    return torch.stack(rows)


# Values a preset gives to the hyperparameters left unset (see the module docstring).
PRESETS: dict[str, dict[str, object]] = {
    "official": {"alpha": 1.0, "clip": 10.0, "clip_grad": 1.0, "apply": "shares", "modulate": "all"},
    "balancemm": {"alpha": 0.1, "clip": 7.0, "clip_grad": 5.0, "apply": "encoders", "modulate": "weights"},
}


def agm_coefficients(
    scores: torch.Tensor, reference: torch.Tensor, alpha: float, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(k, r, r^)`` from the batch scores ``s`` and the running scores ``T`` (both ``(M,)``):
    ``r = exp(M/(M-1) (mean(s) - s))``, ``r^ = exp(M/(M-1) (mean(T) - T))``,
    ``k = exp(alpha * min(r^ - r, clip))``."""
    count = scores.numel()
    factor = count / (count - 1)
    ratio = torch.exp(factor * (scores.mean() - scores))
    target = torch.exp(factor * (reference.mean() - reference))
    return torch.exp(alpha * torch.clamp(target - ratio, max=clip)), ratio, target


@register_method
class AGM(ModulationTarget, ModulationWindow, Method):
    name = "agm"
    min_modalities = 2
    scales_gradients = True

    def __init__(self, preset: Literal["official", "balancemm"] = "official", alpha: float | None = None,
                 clip: float | None = None, clip_grad: float | None = None,
                 apply: Literal["shares", "encoders"] | None = None, modulate: TensorSelection | None = None,
                 modulation_starts: int = 0, modulation_ends: int | None = None,
                 modulate_via: ModulateVia = "auto") -> None:  # fmt: skip
        super().__init__()
        self.init_target(modulate_via)
        given = {"alpha": alpha, "clip": clip, "clip_grad": clip_grad, "apply": apply, "modulate": modulate}
        values = {key: PRESETS[preset][key] if value is None else value for key, value in given.items()}
        if values["alpha"] < 0:
            raise ConfigError(f"method 'agm': alpha must be >= 0, got {values['alpha']}")
        self.preset = preset
        self.alpha, self.clip = float(values["alpha"]), float(values["clip"])
        self.clip_grad = float(values["clip_grad"])
        self.apply, self.modulate = values["apply"], values["modulate"]
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self._model: MultimodalModel | None = None
        self._reference: torch.Tensor | None = None  # T_m, cumulative mean of the scores so far
        self._steps = 0
        self._pending: torch.Tensor | None = None  # coefficients awaiting after_backward (encoders)

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        self.choose_target(optimizer)
        super().setup(model, optimizer, data)
        self._model = model
        groups = modulated_tensors(model, self.modulate, self.name)
        self.attach_updates(optimizer, groups, self.in_window)

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        model = self._model
        if model is None:
            raise RuntimeError("method 'agm' runs extra forward passes: call setup(model) first")
        modalities = list(model.modalities)
        labels = batch["label"]
        modulating = self.in_window()
        scales_updates = self.scales_updates
        carry_gradients = modulating and self.apply == "shares" and not scales_updates
        with model_mode(model, False), torch.set_grad_enabled(carry_gradients and torch.is_grad_enabled()):
            partial = coalition_logits(model, batch)
        full = output.logits if carry_gradients else output.logits.detach()
        responses = shapley_responses(full, partial, modalities)

        local = torch.cat(
            [response_losses(responses, labels), torch.tensor([float(len(labels))], device=labels.device)]
        )
        total = all_reduce_sum(local)
        scores = total[:-1] / total[-1]
        reference = self._reference_on(scores.device, len(modalities))
        coefficients, ratio, target = agm_coefficients(scores, reference, self.alpha, self.clip)
        self._steps += 1
        self._reference = reference * ((self._steps - 1) / self._steps) + scores / self._steps
        if not modulating:
            coefficients = torch.ones_like(coefficients)
        for index, m in enumerate(modalities):
            self._logs[f"score/{m}"] = scores[index]
            self._logs[f"ratio/{m}"] = ratio[index]
            self._logs[f"target/{m}"] = target[index]
            self._logs[f"coeff/{m}"] = coefficients[index]

        if carry_gradients:
            fused = sum(scale_gradient(responses[m], coefficients[i]) for i, m in enumerate(modalities))
            self._pending = None
            return F.cross_entropy(fused, labels)
        self._pending = coefficients if (modulating and (self.apply == "encoders" or scales_updates)) else None
        return F.cross_entropy(output.logits, labels)

    def _reference_on(self, device: torch.device, count: int) -> torch.Tensor:
        if self._reference is None:
            self._reference = torch.zeros(count, device=device)
        return self._reference.to(device)

    def after_backward(
        self, model: MultimodalModel, output: ModelOutput | None = None, batch: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        coefficients, self._pending = self._pending, None
        scales_updates = coefficients is not None and self.scales_updates
        self.update_scaler.scale_next_step(dict(zip(model.modalities, coefficients)) if scales_updates else None)
        if coefficients is not None and not scales_updates:
            for index, m in enumerate(model.modalities):
                grads = [p.grad for p in select_tensors(model.encoders[m], self.modulate) if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, coefficients[index])
        if self.clip_grad > 0:
            clip_if_head_gradient_large(model, self.clip_grad)

    def discard_step(self) -> None:
        self._pending = None
        self.update_scaler.scale_next_step(None)

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "steps": self._steps}
        if self._reference is not None:
            state["reference"] = self._reference.detach().cpu()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._steps = int(state.get("steps", 0))
        reference = state.get("reference")
        self._reference = None if reference is None else torch.as_tensor(reference).float()

    def __repr__(self) -> str:
        return (
            f"AGM(preset={self.preset!r}, alpha={self.alpha}, clip={self.clip}, clip_grad={self.clip_grad}, "
            f"apply={self.apply!r}, modulate_via={self.modulate_via!r})"
        )


def clip_if_head_gradient_large(model: MultimodalModel, threshold: float) -> torch.Tensor:
    """If any entry of a head weight gradient (tensors with >= 2 dimensions) is outside
    ``[-threshold, threshold]``, scale every gradient so the global norm is at most ``threshold``
    (``clip_grad_norm_``'s rule), without a host synchronisation. Returns the factor applied."""
    head = [p.grad for p in model.head.parameters() if p.grad is not None and p.dim() >= 2]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not head or not grads:
        return torch.ones(())
    largest = torch.stack([g.detach().abs().max() for g in head]).max()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    factor = torch.where(largest > threshold, (threshold / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
    torch._foreach_mul_(grads, factor)
    return factor
