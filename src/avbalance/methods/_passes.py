"""Helpers shared by ``agm``, ``pmr``, ``opm``, ``relearning`` and ``umt``: extra forward passes
(modes, zero-masked coalitions), data passes outside the training step that stay in step across
DDP ranks, and cross-rank gathering of per-sample features.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ._training import model_mode
from .distributed import all_reduce_sum, is_distributed

#: Used when no training optimizer is known: the package's default recipe.

def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def proper_coalitions(modalities: Sequence[str]) -> list[frozenset[str]]:
    """Every non-empty coalition of ``modalities`` except the full one, smallest first."""
    return [frozenset(c) for size in range(1, len(modalities)) for c in combinations(modalities, size)]


def stacked_coalition_batch(batch: Mapping[str, torch.Tensor], modalities: Sequence[str],
                            coalitions: Sequence[frozenset[str]]) -> dict[str, torch.Tensor]:
    """One batch holding a copy of ``batch`` per coalition, with the inputs of the modalities
    outside the coalition replaced by zeros, concatenated along the batch dimension."""
    return {
        m: torch.cat([batch[m] if m in coalition else torch.zeros_like(batch[m]) for coalition in coalitions])
        for m in modalities
    }


def average_buffers(module: nn.Module) -> None:
    """Mean of floating-point buffers (BatchNorm running statistics) over ranks."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not is_distributed() or not buffers:
        return
    flat = all_reduce_sum(torch.cat([b.reshape(-1) for b in buffers])) / dist.get_world_size()
    with torch.no_grad():
        for buffer, chunk in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(chunk.view_as(buffer))


def gather_by_index(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], width: int,
                    device: torch.device) -> torch.Tensor:
    """Rows ``(index, values (n, width))`` from every rank assembled into one ``(N, width)`` tensor
    ordered by index, identical on every rank (``N`` = number of rows over all ranks)."""
    count = torch.tensor([float(sum(len(index) for index, _ in parts))], device=device)
    total = int(all_reduce_sum(count))
    out = torch.zeros((total, width), dtype=torch.float32, device=device)
    for index, values in parts:
        out[index.to(device).long()] = values.to(device=device, dtype=torch.float32)
    return all_reduce_sum(out)


def encoder_features(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features of every encoder and the labels of all samples of a split (all ranks),
    computed in eval mode without gradients; rows are ordered by sample index."""
    modalities = list(model.encoders)
    parts: dict[str, list] = {m: [] for m in (*modalities, "label")}
    with model_mode(model, False), torch.no_grad():
        position = 0
        for batch in batches:
            if "index" in batch:
                index = batch["index"]
            elif is_distributed():
                raise ValueError("epoch data batches need an 'index' entry under DDP")
            else:
                index = torch.arange(position, position + len(batch["label"]))
            position += len(batch["label"])
            features = model.encode(batch)
            for m in modalities:
                parts[m].append((index, features[m].float()))
            parts["label"].append((index, batch["label"].float().unsqueeze(1)))
    widths = {**{m: int(model.head.dims[m]) for m in modalities}, "label": 1}
    gathered = {m: gather_by_index(parts[m], widths[m], device) for m in parts}
    labels = gathered.pop("label").squeeze(1).round().long()
    return gathered, labels
