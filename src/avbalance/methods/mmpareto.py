"""``mmpareto``: MMPareto (Wei & Hu, ICML 2024), METHODS.md §7.10.

The objective is the multimodal loss plus one unimodal loss per modality,
``L = CE(z, y) + sum_m CE(z_m, y)``. For each encoder m the gradients of its two tasks are computed
*separately*, ``u = grad_theta_m CE(z, y)`` and ``v = grad_theta_m CE(z_m, y)`` (flattened over the
encoder's tensors). If ``cos(u, v) > 0`` they are combined with equal weights ``(1/2, 1/2)``;
otherwise with the min-norm point of their convex hull, ``a = argmin_{a in [0, 1]}
||a u + (1 - a) v||`` (closed form, as the official ``MinNormSolver``). Then each tensor's summed
gradient ``g`` (from the backward of ``L``) is replaced by ``gamma * max(||g|| / ||g_hat||, 1) *
g_hat`` with ``g_hat = 2 (a u + (1 - a) v)``: the Pareto direction, at least the magnitude of the
summed gradient, times ``gamma``. The head keeps the summed gradient.

``u`` and ``v`` come from ``torch.autograd.grad``, never from ``.grad`` (BalanceMM accumulates
both losses into ``.grad`` before copying, so its two copies are identical and the Pareto step
never happens). Under DDP they are averaged over ranks before the cosine and the min-norm weights,
so every rank applies the same combination. Everything stays on the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..models.model import ModelOutput, MultimodalModel
from .base import Method, StepContext
from .distributed import all_reduce
from .heads import NeedsSplitHead
from .registry import check_param, register_method


def min_norm_weight(uu: torch.Tensor, uv: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
    """Weight ``a`` of ``u`` in the min-norm point ``a u + (1 - a) v`` of the segment between two
    vectors, from their inner products; as the official ``_min_norm_element_from2``: 0.999 if
    ``u.v >= u.u``, else 0.001 if ``u.v >= v.v``, else ``(v.v - u.v) / ||u - v||^2``."""
    denominator = uu + vv - 2 * uv
    closed = (vv - uv) / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    weight = torch.where(uv >= vv, torch.full_like(closed, 0.001), closed)
    return torch.where(uv >= uu, torch.full_like(closed, 0.999), weight)


def pareto_weight(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, cos)``: the weight of the multimodal gradient ``u`` against the unimodal one ``v``:
    1/2 when they agree (``cos > 0``), the min-norm weight when they conflict."""
    uu, uv, vv = u.dot(u), u.dot(v), v.dot(v)
    cos = F.cosine_similarity(u, v, dim=0)
    return torch.where(cos > 0, torch.full_like(uu, 0.5), min_norm_weight(uu, uv, vv)), cos


def pareto_gradients(
    summed: list[torch.Tensor], u: list[torch.Tensor], v: list[torch.Tensor], weight: torch.Tensor, gamma: float
) -> list[torch.Tensor]:
    """Per tensor: ``gamma * max(||g|| / ||g_hat||, 1) * g_hat`` with ``g_hat = 2 (a u + (1 - a) v)``."""
    result = []
    for g, gu, gv in zip(summed, u, v):
        g_hat = 2 * (weight * gu + (1 - weight) * gv)
        hat_norm = g_hat.norm()
        ratio = torch.where(
            hat_norm > 0,
            g.norm() / torch.where(hat_norm > 0, hat_norm, torch.ones_like(hat_norm)),
            torch.ones_like(hat_norm),
        )
        result.append(gamma * torch.clamp(ratio, min=1.0) * g_hat)
    return result


@register_method
class MMPareto(NeedsSplitHead, Method):
    name = "mmpareto"
    min_modalities = 2
    overrides_step = True
    split_head_need = "unimodal losses on per-modality logits of one modality each"

    def __init__(self, gamma: float = 1.5) -> None:
        super().__init__()
        check_param(gamma > 0, self.name, f"gamma must be > 0, got {gamma}")
        self.gamma = gamma

    def losses(
        self, output: ModelOutput, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["label"]
        return (
            F.cross_entropy(output.logits, labels),
            {m: F.cross_entropy(z, labels) for m, z in output.unimodal_logits.items()},
        )

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        multimodal, unimodal = self.losses(output, batch)
        return multimodal + torch.stack(list(unimodal.values())).sum()

    def task_gradients(self, model: MultimodalModel, multimodal: torch.Tensor, unimodal: Mapping[str, torch.Tensor]):
        """``(params, u, v)`` per modality: encoder m's tensors and the gradients of the multimodal
        and of m's unimodal loss with respect to them, each from its own ``autograd.grad`` and
        averaged over ranks. With a split head ``CE(z_n)`` does not depend on encoder m (n != m),
        so one call on the sum of the unimodal losses gives every encoder its own unimodal gradient."""
        params = {m: [p for p in model.encoders[m].parameters() if p.requires_grad] for m in model.modalities}
        flat = [p for m in model.modalities for p in params[m]]
        u = torch.autograd.grad(multimodal, flat, retain_graph=True, allow_unused=True, materialize_grads=True)
        v = torch.autograd.grad(
            torch.stack(list(unimodal.values())).sum(),
            flat,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        averaged = all_reduce([*u, *v], mean=True)
        u, v = averaged[: len(flat)], averaged[len(flat) :]
        result, start = {}, 0
        for m in model.modalities:
            count = len(params[m])
            result[m] = (params[m], u[start : start + count], v[start : start + count])
            start += count
        return result

    def training_step(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], step: StepContext
    ) -> torch.Tensor:
        output = model(batch)
        multimodal, unimodal = self.losses(output, batch)
        total = multimodal + torch.stack(list(unimodal.values())).sum()
        tasks = self.task_gradients(model, multimodal, unimodal)
        step.zero_grad()
        step.backward(total)
        step.step(lambda: self.combine(tasks))
        self._logs["loss/multimodal"] = multimodal.detach()
        for m, loss in unimodal.items():
            self._logs[f"loss/{m}"] = loss.detach()
        return total.detach()

    @torch.no_grad()
    def combine(self, tasks) -> None:
        """Replace each encoder tensor's (final, averaged) gradient by the Pareto gradient."""
        for modality, (params, u, v) in tasks.items():
            if not params:  # a frozen encoder: nothing to combine
                continue
            flat_u = torch.cat([g.reshape(-1) for g in u])
            flat_v = torch.cat([g.reshape(-1) for g in v])
            weight, cos = pareto_weight(flat_u, flat_v)
            self._logs[f"cos/{modality}"] = cos
            self._logs[f"weight/{modality}"] = weight  # weight of the multimodal loss's gradient
            kept = [(p, gu, gv) for p, gu, gv in zip(params, u, v) if p.grad is not None]
            if not kept:
                continue
            new = pareto_gradients(
                [p.grad for p, _, _ in kept], [gu for _, gu, _ in kept], [gv for _, _, gv in kept], weight, self.gamma
            )
            for (param, _, _), grad in zip(kept, new):
                param.grad.copy_(grad)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gamma": self.gamma}

    def __repr__(self) -> str:
        return f"MMPareto(gamma={self.gamma})"
