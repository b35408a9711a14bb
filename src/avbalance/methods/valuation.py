"""``valuation``: sample-level and modality-level modality valuation (Wei et al., CVPR 2024), METHODS §7.18.

After each epoch from ``warmup - 1`` on, every training sample is valued in eval mode: for each
coalition ``S`` of modalities, ``v_i(S) = scale(S) * [argmax z_i^(S) = y_i]`` where ``z^(S)`` are the
fused logits with the modalities outside ``S`` removed, and ``v_i(empty) = 0``. The exact Shapley
value ``phi_{m,i}`` of each modality follows. ``value_scale="official"`` takes ``scale(S) = |S|``
(the official code scores a correct full prediction 2 and a correct single-modality one 1, for two
modalities); ``"shapley"`` takes 1 (BalanceMM). ``removal="feature"`` (official) removes a
modality by zeroing its encoder feature; ``"input"`` (BalanceMM) zeroes its input and re-encodes.

The next epoch trains on the whole training set plus extra copies in which every modality but one
is removed, so that only the low-contribution modality is trained on them:

* ``level="sample"``: per sample and modality, ``1`` copy if ``0.4 < phi < upper``, ``2`` if
  ``-0.1 < phi < 0.4``, ``3`` if ``phi < -0.1`` (``upper`` 1.0, as the official
  ``AV_KS_Dataset_sample_level`` in ``code/datasets/dataloader.py`` and BalanceMM);
* ``level="modality"``: ``gap_m = 1 - mean phi_m`` over ``part_ratio * N`` samples drawn with
  replacement; ``D = 2/3 * alpha * mean_{m<n} |gap_m - gap_n|`` (for two modalities the official
  ``2/3 * alpha * |gap_a - gap_v|``); ``floor(D N)`` samples drawn with replacement get one copy
  keeping only the modality with the largest gap.

The loss is plain cross-entropy on the fused logits; the balancing happens through the data. In
training, a copy's removed modalities arrive as all-zero inputs (the engine's resampling zeroes
inputs); with ``removal="feature"`` the step zeroes the encoder features of such inputs, as the
official code drops features. Under DDP each rank values its shard, the values are summed into
one global table, and the draws come from the method's generator (seeded with ``seed`` when given,
otherwise from the run seed: ``Method.draw_seed``), so every rank builds the same training set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from math import factorial
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.model import MultimodalModel
from .base import EpochData, Method, StepContext
from .coalitions import stacked_coalition_batch
from .distributed import all_reduce_sum
from .registry import register_method


def coalitions(modalities: Sequence[str]) -> list[frozenset[str]]:
    """The non-empty coalitions, smallest first."""
    return [frozenset(c) for size in range(1, len(modalities) + 1) for c in combinations(modalities, size)]


def shapley_from_values(values: Mapping[frozenset[str], torch.Tensor], modalities: Sequence[str]) -> torch.Tensor:
    """Exact per-sample Shapley values ``(B, M)`` from ``v(S)`` ``(B,)`` for every non-empty ``S``
    (``v(empty) = 0``)."""
    count = len(modalities)
    some = next(iter(values.values()))
    phi = []
    for m in modalities:
        total = torch.zeros_like(some)
        rest = [n for n in modalities if n != m]
        for size in range(count):
            weight = factorial(size) * factorial(count - size - 1) / factorial(count)
            for subset in combinations(rest, size):
                subset = frozenset(subset)
                without = values[subset] if subset else torch.zeros_like(some)
                total = total + weight * (values[subset | {m}] - without)
        phi.append(total)
    return torch.stack(phi, dim=1)


def sample_copies(phi: torch.Tensor, upper: float = 1.0) -> torch.Tensor:
    """Copies per (sample, modality): 1 if ``0.4 < phi < upper``, 2 if ``-0.1 < phi < 0.4``,
    3 if ``phi < -0.1``, else 0."""
    phi = phi.double()  # thresholds compared in double precision, as Python floats
    copies = torch.zeros_like(phi, dtype=torch.long)
    copies[(phi > 0.4) & (phi < upper)] = 1
    copies[(phi > -0.1) & (phi < 0.4)] = 2
    copies[phi < -0.1] = 3
    return copies


def modality_level_difference(mean_phi: torch.Tensor, alpha: float) -> torch.Tensor:
    """``D = 2/3 * alpha * mean_{m<n} |gap_m - gap_n|`` with ``gap = 1 - mean phi``."""
    gap = 1.0 - mean_phi
    pairs = [(a, b) for a, b in combinations(range(len(gap)), 2)]
    spread = torch.stack([(gap[a] - gap[b]).abs() for a, b in pairs]).mean()
    return 2.0 / 3.0 * alpha * spread


@register_method
class Valuation(Method):
    name = "valuation"
    min_modalities = 2
    overrides_step = True
    resamples_data = True

    def __init__(self, level: Literal["sample", "modality"] = "sample", warmup: int = 5,
                 removal: Literal["feature", "input"] = "feature",
                 value_scale: Literal["official", "shapley"] = "official", upper: float = 1.0, part_ratio: float = 0.2,
                 alpha: float = 1.0, seed: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the first epoch trains on the plain set), got {warmup}")
        if not 0 < part_ratio <= 1:
            raise ValueError(f"part_ratio must be in (0, 1], got {part_ratio}")
        self.level, self.warmup, self.removal, self.value_scale = level, warmup, removal, value_scale
        self.upper, self.part_ratio, self.alpha, self.seed = upper, part_ratio, alpha, seed
        self.generator = torch.Generator().manual_seed(self.draw_seed)
        self._entries: list[tuple[int, tuple[str, ...]]] | None = None
        self._modalities: tuple[str, ...] = ()

    def reset_generators(self) -> None:
        self.generator = torch.Generator().manual_seed(self.draw_seed)

    # -- valuation ----------------------------------------------------------------------------------
    def _scale(self, coalition: frozenset[str]) -> float:
        return float(len(coalition)) if self.value_scale == "official" else 1.0

    @torch.no_grad()
    def coalition_correct(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor]
    ) -> dict[frozenset[str], torch.Tensor]:
        """``[argmax z^(S) = y]`` per sample for every non-empty coalition, in one batched call."""
        modalities, labels = model.modalities, batch["label"]
        sets = coalitions(modalities)
        if self.removal == "feature":
            features = model.encode(batch)
            stacked = {m: torch.cat([f if m in s else torch.zeros_like(f) for s in sets]) for m, f in features.items()}
            logits = model.head(stacked).logits
        else:
            logits = model(stacked_coalition_batch(batch, modalities, sets)).logits
        correct = (logits.argmax(dim=1) == labels.repeat(len(sets))).float()
        return dict(zip(sets, correct.split(len(labels))))

    def sample_values(self, model: MultimodalModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample Shapley values ``(B, M)`` of one batch."""
        correct = self.coalition_correct(model, batch)
        values = {s: self._scale(s) * c for s, c in correct.items()}
        return shapley_from_values(values, model.modalities)

    def value_training_set(self, model: MultimodalModel, data: EpochData) -> torch.Tensor:
        """``phi`` ``(N, M)`` for the whole training set (every rank's shard, summed over ranks)."""
        was_training = model.training
        model.eval()
        try:
            table = torch.zeros(data.num_train_samples(), len(model.modalities), device=data.device)
            for batch in data.train_batches():
                table[batch["index"].to(table.device)] = self.sample_values(model, batch).to(table.dtype)
            return all_reduce_sum(table).cpu()  # each sample was valued by exactly one rank
        finally:
            model.train(was_training)

    # -- resampling ---------------------------------------------------------------------------------
    def build_entries(self, phi: torch.Tensor, modalities: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
        """The next epoch's training set: every sample once, then the copies."""
        count = phi.shape[0]
        self._modalities = tuple(modalities)
        entries: list[tuple[int, tuple[str, ...]]] = [(i, ()) for i in range(count)]
        keep_only = [tuple(n for n in modalities if n != m) for m in modalities]
        if self.level == "sample":
            copies = sample_copies(phi, self.upper)
            for index, modality in zip(*torch.nonzero(copies, as_tuple=True)):
                entries += [(int(index), keep_only[int(modality)])] * int(copies[index, modality])
            return entries
        drawn = torch.randint(count, (max(1, int(count * self.part_ratio)),), generator=self.generator)
        mean_phi = phi[drawn].mean(0)
        difference = modality_level_difference(mean_phi, self.alpha)
        chosen = torch.randint(count, (int(float(difference) * count),), generator=self.generator)
        keep = int(torch.argmax(1.0 - mean_phi))
        self._logs["difference"] = difference
        entries += [(int(i), keep_only[keep]) for i in chosen]
        return entries

    def on_epoch_end(self, epoch: int, model: MultimodalModel | None = None, data: EpochData | None = None) -> None:
        if model is None or data is None or epoch + 1 < self.warmup:
            return
        phi = self.value_training_set(model, data)
        self._entries = self.build_entries(phi, model.modalities)
        for index, modality in enumerate(model.modalities):
            self._logs[f"contribution/{modality}"] = phi[:, index].mean()
        self._logs["extra_samples"] = torch.tensor(float(len(self._entries) - phi.shape[0]))
        self._logs = {k: v.to(data.device) for k, v in self._logs.items()}

    def train_entries(self) -> Sequence[tuple[int, tuple[str, ...]]] | None:
        return self._entries

    # -- training -----------------------------------------------------------------------------------
    def training_step(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], step: StepContext
    ) -> torch.Tensor:
        if self.removal == "input":
            return super().training_step(model, batch, step)
        features = model.encode(batch)
        for m, feature in features.items():  # a copy's removed modality: all-zero input -> zero feature
            present = batch[m].flatten(1).abs().amax(dim=1) > 0
            features[m] = feature * present.unsqueeze(1).to(feature.dtype)
        loss = F.cross_entropy(model.head(features).logits, batch["label"])
        step.zero_grad()
        step.backward(loss)
        step.step()
        return loss.detach()

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "generator": self.generator.get_state()}
        if self._entries is not None:  # compact: indices and, per entry, which modalities are zeroed
            names = list(self._modalities)
            state["entries"] = {
                "index": torch.tensor([index for index, _ in self._entries], dtype=torch.long),
                "modalities": names,
                "zeroed": torch.tensor(
                    [[m in zeroed for m in names] for _, zeroed in self._entries], dtype=torch.bool
                ).view(len(self._entries), len(names)),
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self.generator.set_state(state["generator"])
        entries = state.get("entries")
        if entries is not None:
            names = list(entries["modalities"])
            self._modalities = tuple(names)
            self._entries = [
                (int(index), tuple(n for n, z in zip(names, row.tolist()) if z))
                for index, row in zip(entries["index"], entries["zeroed"])
            ]

    def __repr__(self) -> str:
        return f"Valuation(level={self.level!r}, warmup={self.warmup}, removal={self.removal!r})"
