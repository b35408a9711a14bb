"""The frame-stack encoder: a per-frame 2-D CNN, then a temporal model over the frame vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .encoders import ENCODERS, ResNetEncoder
from .sequence import step_mask


@ENCODERS.register("framestack")
class FrameStackEncoder(nn.Module):
    """Frame stacks ``(B, C, T, H, W)`` (e.g. lip-reading mouth crops) -> ``(B, D)``, length-aware.

    Each valid frame goes through one BasicBlock ResNet trunk (``width``, ``layers`` as for
    ``resnet``: the model-wide ``model.width`` / ``model.layers`` unless set here) and is average
    pooled to a vector; the ``(B, T, width * 2 ** (len(layers) - 1))`` frame vectors, zero at padded
    frames, go through the sequence encoder ``temporal`` (``gru``, the default, ``lstm``, ``conv1d``
    or ``transformer``, built with ``temporal_options``). Padded frames are never encoded (so they do
    not enter BatchNorm's batch statistics) and the temporal encoders are exact, so each padded
    sample gets the output it gets alone. ``D`` is the temporal encoder's ``out_dim``.
    """

    takes_lengths = True
    model_wide_options = ("width", "layers")
    input_ndim = 4
    input_layout = "(C, T, H, W)"

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        layers: Sequence[int] = (2, 2, 2, 2),
        temporal: Literal["gru", "lstm", "conv1d", "transformer"] = "gru",
        temporal_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.frames = ResNetEncoder(in_channels, width, layers)
        self.temporal = ENCODERS.build(temporal, self.frames.out_dim, **(temporal_options or {}))
        self.out_dim = self.temporal.out_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, steps, height, width = x.shape
        frames = x.transpose(1, 2)  # (B, T, C, H, W)
        if lengths is None:
            vectors = self.frames(frames.reshape(batch * steps, channels, height, width)).view(batch, steps, -1)
            return self.temporal(vectors)
        mask = step_mask(lengths.to(x.device), steps)
        encoded = self.frames(frames[mask])  # (valid frames, D)
        vectors = encoded.new_zeros(batch, steps, encoded.shape[1])
        vectors[mask] = encoded
        return self.temporal(vectors, lengths)
