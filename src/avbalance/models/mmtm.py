"""MMTM blocks between encoder stages (the model of Greedy, METHODS §7.14).

A multimodal transfer module (Joze et al., CVPR 2020) after stage ``s`` of every ResNet encoder
squeezes each modality's feature map ``F_m`` (``C_m`` channels) to ``u_m = GAP(F_m)``, computes

    e = ReLU(W_sq [u_1; ...; u_M] + b_sq)        W_sq: sum_m C_m -> floor(2 sum_m C_m / ratio)
    g_m = sigmoid(W_ex,m e + b_ex,m)             (B, C_m)

and gates the channels, ``F_m <- F_m * g_m``. For clips (frames folded into the batch) the squeeze
averages over frames and space and the clip's gate multiplies every frame.

For Greedy's *curation* mode each block keeps ``running_<m>``, the running mean over training steps
of the batch-mean gate of modality m (updated by the method with global statistics, see
:meth:`MMTM.update_running`), and the ``care`` buffer: in training mode, the gate of the modality
with that index is replaced by its running mean broadcast over the batch (``-1``: none), so that
modality's features are no longer conditioned on the other ones. Evaluation always gates normally.

:class:`MMTMModel` is a :class:`MultimodalModel` whose encoders stay separate modules (one per
modality: ``model.encoders[m].parameters()`` is still modality m's group) and whose MMTM parameters
live in their own module, ``model.mmtm`` (one block per gated stage, ``layer<s>``). The official
Greedy code gates after stages 2-4 of ResNet-18 (``stages`` default: every stage but the first);
BalanceMM after stages 1-4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .encoders import ClipEncoder, ResNetEncoder, fold_frames
from .fusion import FusionHead
from .model import MultimodalModel


class MMTM(nn.Module):
    """One multimodal transfer module for modalities with ``channels[m]`` channels each."""

    def __init__(self, channels: Mapping[str, int], ratio: int = 4):
        super().__init__()
        self.modalities = tuple(channels)
        total = sum(channels.values())
        squeezed = int(2 * total / ratio)
        self.fc_squeeze = nn.Linear(total, squeezed)
        self.fc_excite = nn.ModuleDict({m: nn.Linear(squeezed, c) for m, c in channels.items()})
        for m, c in channels.items():
            self.register_buffer(f"running_{m}", torch.zeros(c))
        self.register_buffer("gate_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("care", torch.tensor(-1), persistent=False)
        self._gate_sums: dict[str, torch.Tensor] | None = None  # training forwards since the last take
        self._gate_count: torch.Tensor | None = None

    def running(self, modality: str) -> torch.Tensor:
        return getattr(self, f"running_{modality}")

    def forward(self, squeezed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gates ``(B, C_m)`` from the squeezed features ``u_m`` ``(B, C_m)``."""
        excitation = torch.relu(self.fc_squeeze(torch.cat([squeezed[m] for m in self.modalities], dim=1)))
        gates = {m: torch.sigmoid(self.fc_excite[m](excitation)) for m in self.modalities}
        if self.training:
            sums = {m: g.detach().sum(0) for m, g in gates.items()}
            count = excitation.new_tensor(float(excitation.shape[0]))
            if self._gate_sums is not None:
                sums = {m: self._gate_sums[m] + sums[m] for m in sums}
                count = self._gate_count + count
            self._gate_sums, self._gate_count = sums, count
            gates = {
                m: torch.where(self.care == index, self.running(m).expand_as(g), g)
                for index, (m, g) in enumerate(gates.items())
            }
        return gates

    def take_gate_sums(self) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """The per-modality sums of the gates and the sample count of the training forwards since
        the last call (None if there was none), for the running means."""
        if self._gate_sums is None:
            return None
        taken = (self._gate_sums, self._gate_count)
        self._gate_sums = self._gate_count = None
        return taken

    @torch.no_grad()
    def update_running(self, gate_means: Mapping[str, torch.Tensor]) -> None:
        """Cumulative mean over steps: ``running <- (mean + running * t) / (t + 1)``, ``t += 1``."""
        steps = self.gate_steps.to(torch.float32)
        for m in self.modalities:
            running = self.running(m)
            running.copy_((gate_means[m] + running * steps) / (steps + 1))
        self.gate_steps.add_(1)


def _stage_channels(encoder: ResNetEncoder, stage: int) -> int:
    return getattr(encoder, f"layer{stage}")[-1].bn2.num_features


class MMTMModel(MultimodalModel):
    """Encoders that exchange MMTM-gated feature maps after the stages in ``stages`` (1-based)."""

    def __init__(
        self, encoders: Mapping[str, nn.Module], head: FusionHead, stages: Sequence[int] | None = None, ratio: int = 4
    ):
        super().__init__(encoders, head)
        for m, encoder in self.encoders.items():
            if not isinstance(encoder, ResNetEncoder):
                raise ValueError(
                    f"MMTM blocks need ResNet encoders (2-D inputs or clips); the {m!r} encoder "
                    f"(model.encoders.{m}.name) is {type(encoder).__name__}"
                )
        depths = {encoder.num_stages for encoder in self.encoders.values()}
        if len(depths) != 1:
            raise ValueError("MMTM blocks need encoders with the same number of stages")
        num_stages = depths.pop()
        stages = list(range(2, num_stages + 1)) if stages is None else [int(s) for s in stages]
        bad = [s for s in stages if not 1 <= s <= num_stages]
        if bad or not stages:
            raise ValueError(f"MMTM stages must be a non-empty subset of 1..{num_stages}, got {stages}")
        self.num_stages = num_stages
        self.mmtm = nn.ModuleDict(
            {
                f"layer{s}": MMTM({m: _stage_channels(e, s) for m, e in self.encoders.items()}, ratio)
                for s in sorted(set(stages))
            }
        )

    def blocks(self) -> list[MMTM]:
        return list(self.mmtm.values())

    def encode(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        maps, frames = {}, {}
        for m, encoder in self.encoders.items():
            x = batch[m]
            if isinstance(encoder, ClipEncoder):
                frames[m] = (x.shape[0], x.shape[2])
                x = fold_frames(x)
            else:
                frames[m] = (x.shape[0], 1)
            maps[m] = encoder.stem(x)
        for stage in range(1, self.num_stages + 1):
            maps = {m: getattr(self.encoders[m], f"layer{stage}")(x) for m, x in maps.items()}
            block = self.mmtm[f"layer{stage}"] if f"layer{stage}" in self.mmtm else None
            if block is not None:
                clips = {m: x.view(*frames[m], *x.shape[1:]) for m, x in maps.items()}  # (B, T, C, h, w)
                gates = block({m: x.mean(dim=(1, 3, 4)) for m, x in clips.items()})
                maps = {m: (clips[m] * gates[m][:, None, :, None, None]).view_as(maps[m]) for m in maps}
        return {m: x.view(*frames[m], *x.shape[1:]).mean(dim=(1, 3, 4)) for m, x in maps.items()}
