"""Batches of samples whose time axis varies: padded per batch, with the true lengths.

A variable-length modality ``m`` is padded with zeros at the end of its time axis to the longest
sample of the batch, and the batch gains ``m_lengths``: an int64 ``(B,)`` tensor of the true
lengths. Time axes: 0 for a sequence ``(T, F)`` or a text ``(T,)``, 1 for a clip ``(C, T, H, W)``.
Every other key is collated by :func:`torch.utils.data.default_collate`, so a batch without a
variable-length modality is exactly the default one.
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from .base import DatasetInfo, lengths_key

CLIP_TIME_AXIS = 1  # (C, T, H, W)


def default_time_axis(ndim: int) -> int:
    return CLIP_TIME_AXIS if ndim == 4 else 0


def pad_to_longest(tensors: list[torch.Tensor], axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``tensors`` padded with zeros at the end of ``axis`` and stacked; their lengths on ``axis``."""
    lengths = torch.tensor([t.shape[axis] for t in tensors], dtype=torch.int64)
    shape = list(tensors[0].shape)
    shape[axis] = int(lengths.max())
    batch = tensors[0].new_zeros((len(tensors), *shape))
    for row, tensor in enumerate(tensors):
        batch[row].narrow(axis, 0, tensor.shape[axis]).copy_(tensor)
    return batch, lengths


def _differing_axis(tensors: list[torch.Tensor], key: str) -> int | None:
    """The one axis along which the tensors' shapes differ (None: all shapes equal)."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return None
    if len({len(s) for s in shapes}) > 1:
        raise ValueError(f"{key}: samples have shapes with different numbers of axes: {sorted(shapes)}")
    axes = [axis for axis in range(len(tensors[0].shape)) if len({s[axis] for s in shapes}) > 1]
    if len(axes) > 1:
        raise ValueError(f"{key}: samples differ along more than one axis ({sorted(shapes)}); only time may vary")
    return axes[0]


class Collate:
    """A picklable collate function (DataLoader workers receive it). ``variable_length``: the
    modalities always padded and given lengths; any other tensor whose shape differs between the
    samples of a batch along exactly one axis is padded too."""

    def __init__(self, variable_length: set[str] | None = None, time_axis: dict[str, int] | None = None):
        self.variable_length = set(variable_length or ())
        self.time_axis = dict(time_axis or {})

    def _axis(self, key: str, tensors: list[torch.Tensor]) -> int | None:
        differing = _differing_axis(tensors, key)
        if key in self.variable_length:
            return self.time_axis.get(key, differing if differing is not None else default_time_axis(tensors[0].dim()))
        return differing

    def __call__(self, samples: list[dict]) -> dict:
        padded = {}
        for key, first in samples[0].items():
            if not isinstance(first, torch.Tensor):
                continue
            tensors = [sample[key] for sample in samples]
            axis = self._axis(key, tensors)
            if axis is not None:
                padded[key], padded[lengths_key(key)] = pad_to_longest(tensors, axis)
        if not padded:
            return default_collate(samples)
        rest = default_collate([{k: v for k, v in sample.items() if k not in padded} for sample in samples])
        batch = {}
        for key in samples[0]:  # the samples' key order, each length after its modality
            if key in padded:
                batch[key], batch[lengths_key(key)] = padded[key], padded[lengths_key(key)]
            else:
                batch[key] = rest[key]
        return batch


def make_collate(variable_length: set[str], time_axis: dict[str, int]) -> Collate:
    return Collate(variable_length, time_axis)


def collate_samples(samples: list[dict]) -> dict:
    """Collate ``samples``, padding any tensor whose time axis differs between them."""
    return Collate()(samples)


def time_axes(info: DatasetInfo) -> dict[str, int]:
    """The time axis of each variable-length modality of ``info`` (from its per-sample shape)."""
    return {m: default_time_axis(len(info.input_shapes[m])) for m in info.variable_length if m in info.input_shapes}


def collate_for(info: DatasetInfo) -> Collate:
    """The collate function of a dataset described by ``info``."""
    variable = {m for m in info.variable_length if m in info.input_shapes}
    return make_collate(variable, time_axes(info))
