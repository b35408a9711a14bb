"""``amco``: Adaptive Mask Co-optimisation (Zhou et al., ICASSP 2023), METHODS §7.15.

The model fuses class-masked per-modality logits through an extra ``C x C`` layer,
``z = W* (sum_m mu_m * z_m) + b*`` (the ``amco`` head, built on any base head). A modality is
*dependent* when its share of one softmax taken over all modalities' logits together,
``u_m = mean_i sum_{k in block m} softmax([z_1; ...; z_M])_ik``, exceeds ``sigma``; the test runs
after each step and decides the masks of the next step (every modality is independent at the start
of an epoch). A dependent modality's logits are multiplied by a class mask that zeroes
``floor(p C)`` classes drawn at random (the same classes for the whole batch), with the ratio
``p = sin(pi/2 * min(eps, l) / eps)`` rising with training progress ``l``. The loss is
``CE(z, y) + sum_m CE(mu_m * z_m, y)``.

``schedule="progress"`` (default) takes ``l = rate * (epoch + batch_idx / num_batches)``: ``p``
rises smoothly from 0 and reaches 1 after ``eps / rate`` epochs. ``schedule="balancemm"``
reproduces BalanceMM: ``l`` restarts at 0 every epoch and grows by ``rate * epoch`` per batch, so
nothing is masked in epoch 0 and every class is masked after a few batches of later epochs.

The class draws come from the method's own generator (seeded with ``seed`` when given, otherwise
from the run seed: ``Method.draw_seed``) and the shares ``u_m``
are averaged over all ranks, so every DDP replica uses the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.amco_head import AMCoHead
from ..models.fusion import HEADS
from ..models.model import MultimodalModel
from .base import Method, StepContext
from .distributed import all_reduce_sum
from .registry import register_method


def mask_ratio(
    epoch: int,
    batch_idx: int,
    num_batches: int,
    eps: float,
    rate: float,
    schedule: Literal["progress", "balancemm"] = "progress",
) -> float:
    """The fraction ``p`` of classes masked in a dependent modality at this step."""
    if schedule == "balancemm":
        progress = rate * epoch * batch_idx
    else:
        progress = rate * (epoch + batch_idx / max(num_batches, 1))
    return math.sin(math.pi / 2 * min(eps, progress) / eps)


def modality_shares(unimodal_logits: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Per modality, the batch *sum* of its block's probability mass in one softmax over the
    concatenated logits ``[z_1; ...; z_M]``, and the batch size: ``((M,), B)``."""
    stacked = torch.stack(list(unimodal_logits.values()), dim=1)  # (B, M, C)
    batch, count, classes = stacked.shape
    probabilities = F.softmax(stacked.reshape(batch, count * classes), dim=1).view(batch, count, classes)
    return probabilities.sum(dim=(0, 2)), batch


@register_method
class AMCo(Method):
    name = "amco"
    min_modalities = 2
    overrides_step = True

    def __init__(self, sigma: float = 0.5, eps: float = 0.3, rate: float = 0.1,
                 schedule: Literal["progress", "balancemm"] = "progress",
                 dependence: Literal["unmasked", "masked"] = "unmasked", seed: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.sigma, self.eps, self.rate = sigma, eps, rate
        self.schedule, self.dependence, self.seed = schedule, dependence, seed
        self.generator = torch.Generator().manual_seed(self.draw_seed)
        self.dependent: torch.Tensor | None = None  # (M,) bool, decided at the previous step

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        fusion = spec["fusion"]
        if fusion == "amco":
            return spec
        if fusion not in HEADS:
            raise ValueError(f"unknown fusion {fusion!r}")
        options = {"base": fusion, "base_options": dict(spec.get("fusion_options", {}))}
        return {**spec, "fusion": "amco", "fusion_options": options}

    def reset_generators(self) -> None:
        self.generator = torch.Generator().manual_seed(self.draw_seed)

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        if not isinstance(model.head, AMCoHead):
            raise ValueError("method 'amco' needs the AMCo head; build the model through adapt_model_spec")

    def on_epoch_start(self, epoch: int, model=None, data=None) -> None:
        super().on_epoch_start(epoch, model, data)
        if self.dependent is not None:
            self.dependent = torch.zeros_like(self.dependent)

    def draw_class_mask(self, classes: int, ratio: float) -> torch.Tensor:
        """Ones with ``floor(ratio * classes)`` zeros at random classes (the method's generator)."""
        mask = torch.ones(classes)
        mask[torch.randperm(classes, generator=self.generator)[: int(ratio * classes)]] = 0.0
        return mask

    def training_step(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], step: StepContext
    ) -> torch.Tensor:
        head: AMCoHead = model.head
        labels = batch["label"]
        count, classes = head.class_masks.shape
        if self.dependent is None or self.dependent.device != labels.device:
            self.dependent = (torch.zeros(count, dtype=torch.bool) if self.dependent is None else self.dependent).to(
                labels.device
            )
        ratio = mask_ratio(step.epoch, step.batch_idx, step.num_batches, self.eps, self.rate, self.schedule)
        class_mask = self.draw_class_mask(classes, ratio).to(labels.device, non_blocking=True)
        masks = torch.where(self.dependent.unsqueeze(1), class_mask.unsqueeze(0), torch.ones_like(head.class_masks))
        head.class_masks.copy_(masks)
        output = model(batch)
        masked = {m: z * masks[i] for i, (m, z) in enumerate(output.unimodal_logits.items())}
        loss = F.cross_entropy(output.logits, labels)
        loss = loss + torch.stack([F.cross_entropy(z, labels) for z in masked.values()]).sum()
        step.zero_grad()
        step.backward(loss)
        step.step()
        step.zero_grad()
        tested = output.unimodal_logits if self.dependence == "unmasked" else masked
        shares, size = modality_shares({m: z.detach() for m, z in tested.items()})
        total = all_reduce_sum(torch.cat([shares, shares.new_tensor([float(size)])]))
        shares = total[:-1] / total[-1]
        self.dependent = shares > self.sigma
        self._logs["mask_ratio"] = torch.tensor(ratio, device=labels.device)
        for index, modality in enumerate(output.unimodal_logits):
            self._logs[f"share/{modality}"] = shares[index]
            self._logs[f"dependent/{modality}"] = self.dependent[index].float()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "generator": self.generator.get_state()}
        if self.dependent is not None:
            state["dependent"] = self.dependent.cpu()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.dependent = state.get("dependent")

    def __repr__(self) -> str:
        return f"AMCo(sigma={self.sigma}, eps={self.eps}, schedule={self.schedule!r})"
