"""``mla``: Multimodal Learning with Alternating unimodal adaptation (Zhang et al., CVPR 2024), METHODS §7.13.

Every batch updates the modalities one after another: for modality m only its encoder runs,
``L_m = CE(W h_m + b, y)`` is computed with the head shared by all modalities and back-propagated,
and the optimizer steps before the next modality. Before each step (except the very first of
training) the head's weight gradient is projected by an orthogonal-weight-modification projector
``P`` (``d x d``, shared by the modalities, identity at the start): with ``r`` the batch mean of the
head's input (detached), ``k = P r^T``, ``P <- P - k k^T / (alpha_t + r k)``, ``P <- P / ||P||_F``
and ``G <- G P^T`` (``projection="replace"``, official) or ``G <- G + G P^T`` (``"add"``,
BalanceMM), with ``alpha_t = 0.1 ** (1 + batch_idx / num_batches)``. At inference the fused logits
weight each modality per sample by ``softmax_m(-entropy(softmax(z_m)))`` (the shared head's
``entropy`` combination).

Under DDP ``r`` is averaged over all ranks, so every replica keeps the same projector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.model import MultimodalModel
from ..models.shared_head import SharedHead
from .base import Method, StepContext
from .distributed import global_mean
from .heads import require_shared_head, shared_head_spec
from .registry import register_method

Projection = Literal["replace", "add", "none"]


def projector_update(projector: torch.Tensor, mean_input: torch.Tensor, alpha: float) -> torch.Tensor:
    """One OWM update of ``P`` with the mean head input ``r`` ``(d,)``, then Frobenius normalisation."""
    k = projector @ mean_input.unsqueeze(1)  # (d, 1)
    updated = projector - (k @ k.t()) / (alpha + mean_input.unsqueeze(0) @ k)
    return updated / torch.linalg.matrix_norm(updated)


def mla_alpha(batch_idx: int, num_batches: int) -> float:
    """``alpha_t = 0.1 ** (1 + batch_idx / num_batches)``: from 0.1 to 0.01 within each epoch."""
    return 0.1 ** (1 + batch_idx / max(num_batches, 1))


@register_method
class MLA(Method):
    name = "mla"
    min_modalities = 2
    overrides_step = True

    def __init__(self, projection: Projection = "replace", head_hidden: int | None = None) -> None:
        super().__init__()
        self.projection = projection
        self.head_hidden = head_hidden
        self.projector: torch.Tensor | None = None
        self.updates = 0  # modality updates so far (the first one is not projected)

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {"combine": "entropy"}
        if self.head_hidden is not None:
            options["hidden"] = self.head_hidden
        return shared_head_spec(spec, self.name, **options)

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        require_shared_head(model, self.name, "entropy")

    def _project(self, head: SharedHead, mean_input: torch.Tensor, step: StepContext) -> None:
        grad = head.fc_out.weight.grad
        if self.updates > 0 and self.projection != "none" and grad is not None:
            projector = self.projector
            if projector is None or projector.device != grad.device:
                size = head.fc_out.in_features
                projector = (
                    torch.eye(size, device=grad.device, dtype=grad.dtype)
                    if projector is None
                    else projector.to(grad.device)
                )
            projector = projector_update(
                projector, mean_input.to(projector.dtype), mla_alpha(step.batch_idx, step.num_batches)
            )
            self.projector = projector
            projected = grad @ projector.t()
            if self.projection == "replace":
                grad.copy_(projected)
            else:
                grad.add_(projected)
        self.updates += 1

    def training_step(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], step: StepContext
    ) -> torch.Tensor:
        head = model.head
        labels = batch["label"]
        losses = []
        for modality in model.modalities:
            step.zero_grad()
            hidden = head.penultimate(model.encode_modality(modality, batch))
            loss = F.cross_entropy(head.fc_out(hidden), labels)
            step.backward(loss)
            mean_input = global_mean(hidden.detach())
            step.step(lambda mean_input=mean_input: self._project(head, mean_input, step))
            losses.append(loss.detach())
            self._logs[f"loss/{modality}"] = losses[-1]
        step.zero_grad()
        return torch.stack(losses).mean()

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "updates": self.updates}
        if self.projector is not None:
            state["projector"] = self.projector.detach().cpu()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates = int(state.get("updates", 0))
        self.projector = state.get("projector")

    def __repr__(self) -> str:
        return f"MLA(projection={self.projection!r})"
