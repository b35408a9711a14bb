"""``greedy``: balanced multimodal learning against greedy learning (Wu et al., ICML 2022), METHODS §7.14.

The model gets MMTM blocks between encoder stages (:class:`~avbalance.models.mmtm.MMTMModel`):
each modality's channels are gated by a function of both modalities' pooled feature maps. After
every backward outside curation, the *conditional learning speed* of each modality m is
accumulated from the start of training,

    M_byp[m]  += ||grad theta_byp,m||^2 / ||theta_byp,m||^2    (MMTM excitation of m + shared squeeze)
    M_main[m] += ||grad theta_main,m||^2 / ||theta_main,m||^2  (encoder m)

and ``d_BDR = log10(M_byp[0] / M_main[0]) - log10(M_byp[1] / M_main[1])``. From epoch
``starting_epoch`` on, when ``|d_BDR| > threshold`` the next ``window`` steps run in *curation*
mode: the gate of the first modality (``d_BDR > 0``) or the second (``d_BDR < 0``) is replaced by
its running mean over training, so that modality learns without the other's help; the speeds are
not accumulated meanwhile. The loss is the sum of the per-modality cross-entropies (``loss_on=
"unimodal"``, the official blend loss) or the fused cross-entropy (``"fused"``, BalanceMM).

Everything stays on the device: the squared norms are ``_foreach_norm`` reductions and the mode
switch is a tensor the model reads, so no host synchronisation happens in a step. Under DDP the
gradients are already averaged, and the batch-mean gates entering the running means are summed
over all ranks, so every replica takes the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.mmtm import MMTMModel
from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .distributed import all_reduce_sum
from .registry import register_method


def squared_norm_ratio(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """``sum ||grad||^2 / sum ||theta||^2`` over a parameter group (parameters without a gradient
    count in the denominator only)."""
    weights = torch.stack(torch._foreach_norm([p.detach() for p in params])).square().sum()
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros_like(weights)
    return torch.stack(torch._foreach_norm(grads)).square().sum() / weights


def learning_speed_groups(model: MMTMModel) -> dict[str, dict[str, list[torch.nn.Parameter]]]:
    """Per modality: ``main`` = its encoder, ``bypass`` = its MMTM excitation layers plus every
    block's shared squeeze layer."""
    groups = {}
    for m in model.modalities:
        bypass = []
        for block in model.blocks():
            bypass += list(block.fc_squeeze.parameters()) + list(block.fc_excite[m].parameters())
        groups[m] = {"main": list(model.encoders[m].parameters()), "bypass": bypass}
    return groups


@register_method
class Greedy(Method):
    name = "greedy"
    min_modalities = 2
    max_modalities = 2

    def __init__(self, threshold: float = 0.01, window: int = 5, starting_epoch: int = 2,
                 loss_on: Literal["unimodal", "fused"] = "unimodal", stages: list[int] | None = None,
                 ratio: int = 4) -> None:  # fmt: skip
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.threshold, self.window, self.starting_epoch = threshold, window, starting_epoch
        self.loss_on, self.stages, self.ratio = loss_on, stages, ratio
        self.speeds: torch.Tensor | None = None  # (2, 2): [modality, (bypass, main)] cumulative
        self.curating: torch.Tensor | None = None
        self.caring: torch.Tensor | None = None
        self.curation_step: torch.Tensor | None = None
        self._groups: dict[str, dict[str, list[torch.nn.Parameter]]] | None = None

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("variant") not in (None, "mmtm"):
            raise ValueError(f"method 'greedy' builds its own model variant (mmtm), not {spec['variant']!r}")
        options: dict[str, Any] = {"ratio": self.ratio}
        if self.stages is not None:
            options["stages"] = list(self.stages)
        return {**spec, "variant": "mmtm", "variant_options": options}

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        if not isinstance(model, MMTMModel):
            raise ValueError("method 'greedy' needs a model with MMTM blocks; build it through adapt_model_spec")

    def _state(self, device: torch.device) -> None:
        if self.speeds is None or self.speeds.device != device:

            def move(value, default):
                return (default if value is None else value).to(device)

            self.speeds = move(self.speeds, torch.zeros(2, 2))
            self.curating = move(self.curating, torch.tensor(False))
            self.caring = move(self.caring, torch.tensor(0))
            self.curation_step = move(self.curation_step, torch.tensor(0))

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        if self.loss_on == "fused":
            return F.cross_entropy(output.logits, labels)
        return torch.stack([F.cross_entropy(z, labels) for z in output.unimodal_logits.values()]).sum()

    def after_backward(
        self, model: MultimodalModel, output: ModelOutput | None = None, batch: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        if self._groups is None:
            self._groups = learning_speed_groups(model)
        device = next(model.parameters()).device
        self._state(device)
        ratios = torch.stack(
            [
                torch.stack(
                    [squared_norm_ratio(self._groups[m]["bypass"]), squared_norm_ratio(self._groups[m]["main"])]
                )
                for m in model.modalities
            ]
        )
        unlocked = self.epoch >= self.starting_epoch
        accumulate = ~self.curating if unlocked else torch.ones((), dtype=torch.bool, device=device)
        self.speeds = self.speeds + torch.where(accumulate, ratios, torch.zeros_like(ratios))
        bdr = torch.log10(self.speeds[:, 0] / self.speeds[:, 1])
        delta = bdr[0] - bdr[1]
        if unlocked:
            enter = ~self.curating & (delta.abs() > self.threshold)
            next_step = torch.where(self.curating, self.curation_step + 1, torch.zeros_like(self.curation_step))
            still = self.curating & (next_step < self.window)
            self.caring = torch.where(enter, torch.where(delta > 0, 0, 1), self.caring)
            self.curation_step = torch.where(enter, torch.zeros_like(next_step), next_step)
            self.curating = enter | still
        else:
            self.curating = torch.zeros_like(self.curating)
        care = torch.where(self.curating, self.caring, torch.full_like(self.caring, -1))
        for block in model.blocks():
            block.care.copy_(care)
            self._update_running(block)
        self._logs.update({"d_bdr": delta.detach(), "curation": self.curating.float(), "caring": self.caring.float()})
        for index, m in enumerate(model.modalities):
            self._logs[f"bdr/{m}"] = bdr[index].detach()

    @staticmethod
    def _update_running(block) -> None:
        sums = block.take_gate_sums()
        if sums is None:
            return
        gate_sums, count = sums
        flat = all_reduce_sum(torch.cat([*gate_sums.values(), count.view(1)]))
        sizes = [g.numel() for g in gate_sums.values()]
        means = dict(zip(gate_sums, (flat[:-1] / flat[-1]).split(sizes)))
        block.update_running(means)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.speeds is not None:
            state.update(
                speeds=self.speeds.cpu(),
                curating=self.curating.cpu(),
                caring=self.caring.cpu(),
                curation_step=self.curation_step.cpu(),
            )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "speeds" in state:
            self.speeds, self.curating = state["speeds"], state["curating"]
            self.caring, self.curation_step = state["caring"], state["curation_step"]

    def __repr__(self) -> str:
        return f"Greedy(threshold={self.threshold}, window={self.window}, starting_epoch={self.starting_epoch})"
