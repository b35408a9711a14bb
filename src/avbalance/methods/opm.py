"""``opm``: On-the-fly Prediction Modulation (Wei, Hu, Du, Wen, TPAMI 2024), METHODS.md §7.3.

Each modality's score ``s_m = sum_i softmax(z_m)_i[y_i]`` comes from its per-modality logits of the
same forward pass (no gradient). The modality ahead gets the strength
``rho_m = tanh(relu(s_m / mean_{n != m} s_n - 1))`` (``s_a / s_v - 1`` for two modalities) and the
drop probability ``q_m = clip(q_base (1 + lam rho_m), 0, 1)`` (0 when ``rho_m = 0``: only leading
modalities are dropped). With probability ``p_exe`` per step, every sample's feature vector of
modality m is dropped with probability ``q_m`` (``r_m,i ~ Bernoulli(1 - q_m)``), the kept features
are rescaled by one shared factor ``1 / (1 - theta)`` with ``theta = sum_m d_m q_m / sum_m d_m``,
the head is evaluated again on them, and the loss is the cross-entropy of these logits over the
samples that kept at least one modality. Outside the window (official: a warm-up of six epochs)
the loss is the plain cross-entropy.

The drop decisions come from the method's own generator, seeded with ``seed`` when given and
otherwise from the run seed (``Method.draw_seed``): the same decision
on every DDP rank, independent masks for each rank's samples; scores are summed over ranks. No
sample is removed from the batch (kept samples are weighted), so nothing leaves the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.model import ModelOutput, MultimodalModel
from .base import Method
from .distributed import all_reduce_sum, rank_and_world
from .modulation import ModulationWindow
from .ogm import modality_scores
from .randomness import DrawsOnDevice
from .registry import register_method


def drop_probabilities(scores: torch.Tensor, q_base: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rho, q)`` from the scores ``(M,)``: ``rho_m = tanh(relu(s_m / mean_{n != m} s_n - 1))``,
    ``q_m = clip(q_base (1 + lam rho_m), 0, 1)`` where ``rho_m > 0``, else 0."""
    count = scores.numel()
    others = (scores.sum() - scores) / (count - 1)
    rho = torch.tanh(F.relu(torch.nan_to_num(scores / others, nan=1.0, posinf=1e6) - 1))
    q = torch.where(rho > 0, torch.clamp(q_base * (1 + lam * rho), 0.0, 1.0), torch.zeros_like(rho))
    return rho, q


def modulated_features(
    features: Mapping[str, torch.Tensor], q: torch.Tensor, uniform: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Drop and rescale features: modality m of sample i is kept when ``uniform[i, m] < 1 - q_m``;
    kept features are divided by ``1 - theta``, ``theta = sum_m d_m q_m / sum_m d_m``.
    Returns the features, the keep mask ``(B, M)`` and theta."""
    modalities = list(features)
    dims = torch.tensor([features[m].shape[1] for m in modalities], dtype=q.dtype, device=q.device)
    theta = (dims * q).sum() / dims.sum()
    keep = uniform < (1 - q).unsqueeze(0)
    scale = 1 / (1 - theta).clamp_min(1e-6)
    out = {
        m: features[m] * (keep[:, i : i + 1].to(features[m].dtype) * scale.to(features[m].dtype))
        for i, m in enumerate(modalities)
    }
    return out, keep, theta


@register_method
class OPM(DrawsOnDevice, ModulationWindow, Method):
    name = "opm"
    min_modalities = 2

    def __init__(self, q_base: float = 0.5, lam: float = 0.5, p_exe: float = 0.7, modulation_starts: int = 6,
                 modulation_ends: int | None = None, seed: int | None = None) -> None:  # fmt: skip
        super().__init__()
        for key, value in (("q_base", q_base), ("p_exe", p_exe)):
            if not 0 <= value <= 1:
                raise ConfigError(f"method 'opm': {key} must be in [0, 1], got {value}")
        self.q_base, self.lam, self.p_exe = q_base, lam, p_exe
        self.modulation_starts, self.modulation_ends = modulation_starts, modulation_ends
        self.seed = seed
        self._model: MultimodalModel | None = None
        self.reset_generators()

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        self._model = model

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["label"]
        modalities = list(output.unimodal_logits)
        scores = all_reduce_sum(modality_scores(output.unimodal_logits, labels))
        rho, q = drop_probabilities(scores, self.q_base, self.lam)
        for index, m in enumerate(modalities):
            self._logs[f"ratio/{m}"] = rho[index]
        if not self.in_window():
            for m in modalities:
                self._logs[f"q/{m}"] = torch.zeros_like(q[0])
            return F.cross_entropy(output.logits, labels)
        if self._model is None:
            raise RuntimeError("method 'opm' evaluates the head again: call setup(model) first")

        size = len(labels)
        rank, world = rank_and_world()
        generator = self.generator(labels.device)
        execute = torch.rand(1, generator=generator, device=labels.device) < self.p_exe
        uniform = torch.rand(world * size, len(modalities), generator=generator, device=labels.device)
        uniform = uniform[rank * size : (rank + 1) * size]
        q_step = torch.where(execute, q, torch.zeros_like(q))
        features, keep, theta = modulated_features(output.features, q_step, uniform)
        logits = self._model.head(features).logits
        kept = keep.any(dim=1).to(logits.dtype)
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        for index, m in enumerate(modalities):
            self._logs[f"q/{m}"] = q_step[index]
        self._logs["executed"] = execute.squeeze(0).float()
        self._logs["kept"] = kept.mean()
        self._logs["theta"] = theta
        return (per_sample * kept).sum() / kept.sum().clamp_min(1)

    def __repr__(self) -> str:
        return f"OPM(q_base={self.q_base}, lam={self.lam}, p_exe={self.p_exe})"
