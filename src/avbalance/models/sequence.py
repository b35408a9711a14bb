"""Sequence encoders: variable-length ``(B, T, F)`` features or ``(B, T)`` token ids -> ``(B, D)``.

Every encoder here takes ``forward(x, lengths=None)``: ``lengths`` ``(B,)`` holds each sample's true
number of steps (the rest of the time axis is padding at the end). Each padded sample gets, to float
tolerance, the output it gets alone: recurrent encoders run on packed sequences, the transformer masks
padded keys, pooling averages over valid steps only. Without ``lengths`` every step is valid.

Text: with ``vocab_size`` the input is ``(B, T)`` int64 token ids (pad id 0), looked up in an
``nn.Embedding(vocab_size, embed_dim, padding_idx=0)`` first; ``in_channels`` is then unused.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .encoders import ENCODERS


def step_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, steps)`` booleans: True at the valid (not padded) steps of each sample."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` ``(B, T, D)`` over the steps where ``mask`` ``(B, T)`` is True."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def full_lengths(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``lengths``, or every sample's full time axis when there is none."""
    if lengths is not None:
        return lengths.to(device=x.device, dtype=torch.long)
    return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)


def sinusoidal_positions(steps: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The ``(steps, dim)`` sine/cosine position table of Vaswani et al. (2017)."""
    position = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(steps, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table.to(dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``(B, C, T)`` whose statistics count only valid steps; padded steps come out 0."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        if not self.training:  # running statistics: a per-step affine map, no batch statistics to protect
            return super().forward(x) * mask[:, None, :].to(x.dtype)
        steps = x.transpose(1, 2)
        normalised = torch.zeros_like(steps)
        normalised[mask] = super().forward(steps[mask])
        return normalised.transpose(1, 2)


class SequenceEncoder(nn.Module):
    """What the sequence encoders share: the optional token embedding and the lengths contract."""

    takes_lengths = True
    #: The model-wide ``model.width`` / ``model.layers`` (ResNet sizes) do not apply here.
    model_wide_options: tuple[str, ...] = ()
    #: Per-sample input dimensions: ``(T, F)`` features (``(T,)`` token ids with ``vocab_size``).
    input_ndim = 2
    input_layout = "(T, F)"

    def __init__(self, in_channels: int, vocab_size: int | None, embed_dim: int):
        super().__init__()
        if vocab_size is not None and vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (pad id 0 and one token), got {vocab_size}")
        self.embedding = None if vocab_size is None else nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.input_dim = in_channels if vocab_size is None else embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` step features: the input itself, or the embeddings of token ids ``(B, T)``."""
        return x if self.embedding is None else self.embedding(x.long())


class RecurrentEncoder(SequenceEncoder):
    """A (bidirectional by default) recurrent network over ``(B, T, F)`` -> ``(B, D)``."""

    rnn_class: type[nn.RNNBase] = nn.GRU

    def __init__(
        self,
        in_channels: int,
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        pool: Literal["last", "mean"] = "last",
        vocab_size: int | None = None,
        embed_dim: int = 64,
    ):
        super().__init__(in_channels, vocab_size, embed_dim)
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden and layers must be at least 1, got hidden={hidden}, layers={layers}")
        self.rnn = self.rnn_class(
            self.input_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # the recurrent layers apply dropout between layers only
        )
        self.directions = 2 if bidirectional else 1
        self.pool = pool
        self.out_dim = hidden * self.directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(x)
        lengths = full_lengths(x, lengths)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        if self.pool == "mean":
            padded, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
            return masked_mean(padded, step_mask(lengths, x.shape[1]))
        final = state[0] if isinstance(state, tuple) else state  # an LSTM's state is (h, c)
        # The last layer's final states, forward then backward: (directions, B, H) -> (B, directions * H).
        return final[-self.directions :].transpose(0, 1).reshape(x.shape[0], self.out_dim)


@ENCODERS.register("gru")
class GRUEncoder(RecurrentEncoder):
    """A GRU over ``(B, T, F)`` features (or ``(B, T)`` token ids with ``vocab_size``) -> ``(B, D)``.

    Length-aware through packed sequences. Options: ``hidden`` (state size, default 128), ``layers``
    (1), ``bidirectional`` (True), ``dropout`` (between layers), ``pool``: ``last`` (concatenated final
    forward and backward states, default) or ``mean`` (mean of the outputs over valid steps);
    ``vocab_size`` / ``embed_dim`` for text. ``D = hidden * (2 if bidirectional else 1)``.
    """

    rnn_class = nn.GRU


@ENCODERS.register("lstm")
class LSTMEncoder(RecurrentEncoder):
    """An LSTM over ``(B, T, F)`` features (or ``(B, T)`` token ids with ``vocab_size``) -> ``(B, D)``.

    Options and output as for ``gru`` (the final hidden states, not the cell states, with ``pool=last``).
    """

    rnn_class = nn.LSTM


@ENCODERS.register("conv1d")
class TemporalConvEncoder(SequenceEncoder):
    """A temporal CNN over ``(B, T, F)`` features (or ``(B, T)`` token ids with ``vocab_size``) -> ``(B, D)``.

    ``layers`` blocks of ``Conv1d(kernel, stride 1, 'same' zero padding)`` + BatchNorm + ReLU with
    ``channels`` channels each, then the mean over valid steps (``D = channels``). Padding is exact:
    padded steps are set to zero before every convolution, so a convolution near a sample's end sees
    the same zeros as the zero padding of that sample alone, and BatchNorm's batch statistics in
    training count valid steps only. Options: ``channels`` (128), ``layers`` (2), ``kernel`` (3),
    ``vocab_size`` / ``embed_dim`` for text.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 128,
        layers: int = 2,
        kernel: int = 3,
        vocab_size: int | None = None,
        embed_dim: int = 64,
    ):
        super().__init__(in_channels, vocab_size, embed_dim)
        if channels < 1 or layers < 1 or kernel < 1:
            raise ValueError(f"channels, layers and kernel must be at least 1, got {channels}, {layers}, {kernel}")
        sizes = [self.input_dim] + [channels] * layers
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel, padding="same", bias=False) for a, b in zip(sizes, sizes[1:])
        )
        self.norms = nn.ModuleList(MaskedBatchNorm1d(channels) for _ in range(layers))
        self.out_dim = channels

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(x)
        mask = step_mask(full_lengths(x, lengths), x.shape[1])
        hidden = (x * mask.unsqueeze(-1).to(x.dtype)).transpose(1, 2)  # (B, F, T), padded steps zero
        for conv, norm in zip(self.convs, self.norms):
            hidden = F.relu(norm(conv(hidden), mask if lengths is not None else None))
        return masked_mean(hidden.transpose(1, 2), mask)


@ENCODERS.register("transformer")
class TransformerSequenceEncoder(SequenceEncoder):
    """A transformer encoder over ``(B, T, F)`` features (or ``(B, T)`` token ids with ``vocab_size``) -> ``(B, D)``.

    A linear input projection to ``d_model``, sinusoidal positions, ``layers`` post-norm
    ``nn.TransformerEncoderLayer`` s whose attention ignores padded steps (``src_key_padding_mask``),
    then ``pool``: ``mean`` over valid steps (default) or ``cls`` (the output of a learnt token put
    before the sequence). ``D = d_model``. Options: ``d_model`` (128), ``heads`` (4, dividing
    ``d_model``), ``layers`` (2), ``ff`` (feed-forward width, 256), ``dropout`` (0.1), ``pool``,
    ``vocab_size`` / ``embed_dim`` for text.
    """

    def __init__(
        self,
        in_channels: int,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 2,
        ff: int = 256,
        dropout: float = 0.1,
        pool: Literal["mean", "cls"] = "mean",
        vocab_size: int | None = None,
        embed_dim: int = 64,
    ):
        super().__init__(in_channels, vocab_size, embed_dim)
        if d_model < 1 or heads < 1 or d_model % heads:
            raise ValueError(f"heads must divide d_model, got d_model={d_model}, heads={heads}")
        if layers < 1 or ff < 1:
            raise ValueError(f"layers and ff must be at least 1, got layers={layers}, ff={ff}")
        self.project = nn.Linear(self.input_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02) if pool == "cls" else None
        self.out_dim = d_model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(self.embed(x))
        batch, steps, dim = x.shape
        mask = step_mask(full_lengths(x, lengths), steps)
        x = x + sinusoidal_positions(steps, dim, x.device, x.dtype)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(batch, 1, dim), x], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        hidden = self.encoder(x, src_key_padding_mask=~mask)
        return hidden[:, 0] if self.cls is not None else masked_mean(hidden, mask)
