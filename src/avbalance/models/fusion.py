"""Fusion heads: ``{modality: feature (B, D_m)}`` -> fused logits **and** per-modality logits.

=============  ===========  =================================================================
name           modalities   per-modality logits
=============  ===========  =================================================================
``sum``        any          ``z_m = W_m h_m + b_m`` (each modality's own linear layer); exact sum
``concat``     any          ``z_m = W_m h_m + b / M`` (column block of the head); exact sum
``cosine``     any          ``z_m = s * cos(h_m, W_m,k)`` (MMCosine, bias unused); exact sum
``film``       two          Shapley split of the head (see below); exact sum
``gated``      two          Shapley split of the head (see below); exact sum
``film_sym``   two          concat-style split over the cross-modulated streams (approximate)
``gated_sym``  two          concat-style split over the cross-gated streams (approximate)
=============  ===========  =================================================================

The original FiLM and gated heads (one modality conditions the other) have no additive form.
Official code either crashes on them (OGM-GE slices a head that is not there) or sets
``z_a = z_v = z`` (PMR), which makes every score ratio 1. Here each modality's logits are its
Shapley share of the head's output with zero features as the reference: for two modalities
``z_a = f(0, 0) / 2 + [f(a, v) - f(0, v) + f(a, 0) - f(0, 0)] / 2``. The shares add up to the fused
logits exactly, reduce to ``W_m h_m + b / 2`` for a linear head, and are computed the same way in
training and evaluation (one extra head evaluation on a 4x batch; the encoders do not rerun).

The symmetric ``film_sym`` / ``gated_sym`` heads are those of the MMCosine code (METHODS §4.6):
each stream is modulated by the other modality, the streams are concatenated, and the head is
split in column blocks like ``concat``; because each stream already carries information from the
other modality, these per-modality logits are an approximation. ``film_sym``, ``gated_sym`` and
``concat`` accept ``cosine_scale`` to produce MMCosine's cosine logits over their blocks.

Modules use the official parameter names (``fc_out``, ``fc_x``/``fc_y`` for the first/second
modality, ``fc``) so official checkpoints convert by renaming only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import combinations
from math import factorial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry


@dataclass
class HeadOutput:
    logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]


def xavier_linear(linear: nn.Linear) -> nn.Linear:
    # The official OGM-GE scripts' global init for linear layers.
    nn.init.xavier_normal_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


#: Fusion heads by name, listed in registration order (this module's general heads first). Every
#: module of :mod:`avbalance.models` is imported on the first look-up, so a head in its own file
#: decorated with :func:`register_head` is found.
HEADS: Registry[type[FusionHead]] = Registry("fusion", package="avbalance.models", sorted_names=False)


def register_head(cls: type[FusionHead]) -> type[FusionHead]:
    """Class decorator: register a :class:`FusionHead` subclass under ``cls.name`` (a taken name raises)."""
    HEADS.add(cls.name, cls)
    return cls


class FusionHead(nn.Module):
    """Base class: remembers the modality order and feature sizes, checks the modality count."""

    exact_modalities: ClassVar[int | None] = None  # set on heads defined for one count only

    def __init__(self, dims: Mapping[str, int], num_classes: int):
        super().__init__()
        self.check_count(dims)
        if not dims:
            raise ValueError("a fusion head needs at least one modality")
        self.modalities = tuple(dims)
        self.dims = dict(dims)
        self.num_classes = num_classes

    name: ClassVar[str] = "?"

    @classmethod
    def check_count(cls, dims: Mapping[str, int]) -> None:
        if cls.exact_modalities is not None and len(dims) != cls.exact_modalities:
            raise ValueError(
                f"fusion {cls.name!r} supports exactly {cls.exact_modalities} modalities, "
                f"got {len(dims)} ({', '.join(dims)})"
            )

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:  # pragma: no cover
        raise NotImplementedError


@register_head
class SumFusion(FusionHead):
    """``z = sum_m (W_m h_m + b_m)``; ``z_m`` is modality m's own linear output (full bias, in
    training and evaluation alike -- official OGM-GE halves the bias only when validating)."""

    name = "sum"

    def __init__(self, dims: Mapping[str, int], num_classes: int):
        super().__init__(dims, num_classes)
        self.fc = nn.ModuleDict({m: xavier_linear(nn.Linear(d, num_classes)) for m, d in dims.items()})

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:
        unimodal = {m: self.fc[m](features[m]) for m in self.modalities}
        return HeadOutput(torch.stack(list(unimodal.values())).sum(0), unimodal)


class SplitLinearHead(FusionHead):
    """A final linear layer ``fc_out`` over concatenated per-modality *streams*, split in column
    blocks: ``z_m = W_m s_m + b / M`` (or ``s * cos(s_m, W_m)`` in cosine mode), ``z = sum_m z_m``."""

    def __init__(self, dims: Mapping[str, int], num_classes: int, stream_dims: Mapping[str, int],
                 cosine_scale: float | None = None):  # fmt: skip
        super().__init__(dims, num_classes)
        self.stream_dims = dict(stream_dims)
        self.fc_out = xavier_linear(nn.Linear(sum(self.stream_dims.values()), num_classes))
        self.cosine_scale = cosine_scale

    def streams(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: features[m] for m in self.modalities}

    def weight_blocks(self) -> dict[str, torch.Tensor]:
        blocks = torch.split(self.fc_out.weight, [self.stream_dims[m] for m in self.modalities], dim=1)
        return dict(zip(self.modalities, blocks))

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:
        streams = self.streams(features)
        blocks = self.weight_blocks()
        if self.cosine_scale is not None:
            unimodal = {
                m: self.cosine_scale * F.linear(F.normalize(streams[m], dim=1), F.normalize(blocks[m], dim=1))
                for m in self.modalities
            }
        else:
            bias_share = self.fc_out.bias / len(self.modalities)
            unimodal = {m: F.linear(streams[m], blocks[m], bias_share) for m in self.modalities}
        return HeadOutput(torch.stack(list(unimodal.values())).sum(0), unimodal)


@register_head
class ConcatFusion(SplitLinearHead):
    name = "concat"

    def __init__(self, dims: Mapping[str, int], num_classes: int, cosine_scale: float | None = None):
        super().__init__(dims, num_classes, dims, cosine_scale)


@register_head
class CosineFusion(ConcatFusion):
    """The MMCosine head: per-modality scaled cosines between features and class weights."""

    name = "cosine"

    def __init__(self, dims: Mapping[str, int], num_classes: int, scale: float = 10.0):
        super().__init__(dims, num_classes, cosine_scale=scale)


def shapley_split(
    head: Callable[[dict[str, torch.Tensor]], torch.Tensor], features: Mapping[str, torch.Tensor]
) -> HeadOutput:
    """Split ``head(features)`` into per-modality Shapley shares with zero features as reference.

    All ``2^M`` coalitions are evaluated in one call on a stacked batch; the reference output
    ``head(0)`` is shared equally, so the shares add up to the full output exactly.
    """
    modalities = list(features)
    count, batch = len(modalities), next(iter(features.values())).shape[0]
    coalitions = [frozenset(c) for size in range(count + 1) for c in combinations(modalities, size)]
    stacked = {
        m: torch.cat([features[m] if m in c else torch.zeros_like(features[m]) for c in coalitions]) for m in modalities
    }
    values = dict(zip(coalitions, head(stacked).split(batch)))
    full, empty = values[frozenset(modalities)], values[frozenset()]
    unimodal = {}
    for m in modalities:
        share = empty / count
        for coalition in coalitions:
            if m in coalition:
                continue
            weight = factorial(len(coalition)) * factorial(count - len(coalition) - 1) / factorial(count)
            share = share + weight * (values[coalition | {m}] - values[coalition])
        unimodal[m] = share
    return HeadOutput(full, unimodal)


@register_head
class FiLMFusion(FusionHead):
    """Original FiLM (OGM-GE code): ``(gamma, beta) = fc(h_c)``, ``z = fc_out(gamma * h_t + beta)``
    where ``c`` is the conditioning modality (``condition``, default the first) and ``t`` the other."""

    name = "film"
    exact_modalities = 2

    def __init__(self, dims: Mapping[str, int], num_classes: int, condition: str | None = None):
        super().__init__(dims, num_classes)
        self.condition = condition or self.modalities[0]
        if self.condition not in dims:
            raise ValueError(f"film: condition {self.condition!r} is not one of {', '.join(dims)}")
        self.target = next(m for m in self.modalities if m != self.condition)
        target_dim = dims[self.target]
        self.fc = xavier_linear(nn.Linear(dims[self.condition], 2 * target_dim))
        self.fc_out = xavier_linear(nn.Linear(target_dim, num_classes))

    def fused(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        gamma, beta = self.fc(features[self.condition]).chunk(2, dim=1)
        return self.fc_out(gamma * features[self.target] + beta)

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:
        return shapley_split(self.fused, {m: features[m] for m in self.modalities})


@register_head
class GatedFusion(FusionHead):
    """Original gated fusion (OGM-GE code): ``o_x = fc_x(h_x)``, ``o_y = fc_y(h_y)``,
    ``z = fc_out(sigmoid(o_gate) * o_other)`` where ``gate`` (default the first modality) gates."""

    name = "gated"
    exact_modalities = 2

    def __init__(self, dims: Mapping[str, int], num_classes: int, hidden: int | None = None, gate: str | None = None):
        super().__init__(dims, num_classes)
        hidden = hidden or max(dims.values())
        self.gate = gate or self.modalities[0]
        if self.gate not in dims:
            raise ValueError(f"gated: gate {self.gate!r} is not one of {', '.join(dims)}")
        first, second = self.modalities
        self.fc_x = xavier_linear(nn.Linear(dims[first], hidden))
        self.fc_y = xavier_linear(nn.Linear(dims[second], hidden))
        self.fc_out = xavier_linear(nn.Linear(hidden, num_classes))

    def fused(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        first, second = self.modalities
        out_x, out_y = self.fc_x(features[first]), self.fc_y(features[second])
        gated = torch.sigmoid(out_x) * out_y if self.gate == first else out_x * torch.sigmoid(out_y)
        return self.fc_out(gated)

    def forward(self, features: Mapping[str, torch.Tensor]) -> HeadOutput:
        return shapley_split(self.fused, {m: features[m] for m in self.modalities})


@register_head
class SymmetricFiLMFusion(SplitLinearHead):
    """MMCosine's revised FiLM: each modality's stream is FiLM-modulated by the other,
    ``x' = gamma_y * x + beta_y``, ``y' = gamma_x * y + beta_x``, then a concat-style split head."""

    name = "film_sym"
    exact_modalities = 2

    def __init__(self, dims: Mapping[str, int], num_classes: int, cosine_scale: float | None = None):
        self.check_count(dims)
        first, second = list(dims)
        super().__init__(dims, num_classes, dims, cosine_scale)
        self.fc_x = xavier_linear(nn.Linear(dims[first], 2 * dims[second]))
        self.fc_y = xavier_linear(nn.Linear(dims[second], 2 * dims[first]))

    def streams(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first, second = self.modalities
        x, y = features[first], features[second]
        gamma_x, beta_x = self.fc_x(x).chunk(2, dim=1)
        gamma_y, beta_y = self.fc_y(y).chunk(2, dim=1)
        return {first: gamma_y * x + beta_y, second: gamma_x * y + beta_x}


@register_head
class SymmetricGatedFusion(SplitLinearHead):
    """MMCosine's revised gated fusion: ``x' = sigmoid(o_y) * o_x``, ``y' = sigmoid(o_x) * o_y``,
    then a concat-style split head over ``[x'; y']``."""

    name = "gated_sym"
    exact_modalities = 2

    def __init__(
        self, dims: Mapping[str, int], num_classes: int, hidden: int | None = None, cosine_scale: float | None = None
    ):
        self.check_count(dims)
        hidden = hidden or max(dims.values())
        first, second = list(dims)
        super().__init__(dims, num_classes, {first: hidden, second: hidden}, cosine_scale)
        self.fc_x = xavier_linear(nn.Linear(dims[first], hidden))
        self.fc_y = xavier_linear(nn.Linear(dims[second], hidden))

    def streams(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first, second = self.modalities
        out_x, out_y = self.fc_x(features[first]), self.fc_y(features[second])
        return {first: torch.sigmoid(out_y) * out_x, second: torch.sigmoid(out_x) * out_y}


def build_head(name: str, dims: Mapping[str, int], num_classes: int, **options) -> FusionHead:
    """Build the fusion head ``name`` (see :data:`HEADS`) for features of sizes ``dims``."""
    return HEADS.build(name, dims, num_classes, **options)
