"""Helpers shared by ``agm``, ``pmr``, ``opm``, ``relearning`` and ``umt``: extra forward passes
(modes, zero-masked coalitions), data passes outside the training step that stay in step across
DDP ranks, and cross-rank gathering of per-sample features.
"""

from __future__ import annotations

import contextlib
from itertools import combinations
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .distributed import all_reduce_sum, is_distributed

#: Used when no training optimizer is known: the package's default recipe.
DEFAULT_OPTIMIZER: tuple[type, dict[str, Any]] = (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9,
                                                                    "weight_decay": 1e-4})


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def modules_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put every submodule in train (or eval) mode for a block, then give each its own mode back
    (a module kept in eval mode on purpose stays so)."""
    saved = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, mode in saved:
            module.training = mode


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


def synchronized(batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches while every rank still has one: ranks with one sample more than the others
    stop together, so collectives inside the loop (gradient averaging) never wait forever."""
    if not is_distributed():
        yield from batches
        return
    iterator = iter(batches)
    world = dist.get_world_size()
    while True:
        batch = next(iterator, None)
        flag = torch.tensor([0.0 if batch is None else 1.0], device=device)
        if float(all_reduce_sum(flag)) < world:  # per-epoch work: one sync per batch is fine
            return
        yield batch


def average_buffers(module: nn.Module) -> None:
    """Mean of floating-point buffers (BatchNorm running statistics) over ranks."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not is_distributed() or not buffers:
        return
    flat = all_reduce_sum(torch.cat([b.reshape(-1) for b in buffers])) / dist.get_world_size()
    with torch.no_grad():
        for buffer, chunk in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(chunk.view_as(buffer))


def training_optimizer_recipe(optimizer: torch.optim.Optimizer | None) -> tuple[type, dict[str, Any]]:
    """Class and settings of the run's optimizer (rank 0's under DDP, where only rank 0 is given
    it), or :data:`DEFAULT_OPTIMIZER` when none is known."""
    recipe = DEFAULT_OPTIMIZER if optimizer is None else (type(optimizer), dict(optimizer.defaults))
    if is_distributed():
        box: list[Any] = [recipe]
        dist.broadcast_object_list(box, src=0)
        recipe = box[0]
    return recipe


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
    with modules_mode(model, False), torch.no_grad():
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
