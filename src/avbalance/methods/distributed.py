"""Cross-rank reductions for methods whose statistics must be global under DDP.

Every reduction goes through :func:`all_reduce`: the tensors are flattened into one buffer and
summed (or averaged) in a single collective. In one process every function is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank() if is_distributed() else 0), world_size()


def all_reduce(tensors: Sequence[torch.Tensor], mean: bool = False) -> list[torch.Tensor]:
    """The sum (or ``mean``) of each tensor over all ranks, in one collective; new tensors of the
    inputs' shapes (the inputs themselves in one process)."""
    tensors = list(tensors)
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if mean:
        flat /= dist.get_world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a no-op in a single process)."""
    return all_reduce([tensor])[0]


def average_in_place(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor by its mean over all ranks."""
    averaged = all_reduce(tensors, mean=True)
    with torch.no_grad():
        for tensor, mean in zip(tensors, averaged):
            if mean is not tensor:
                tensor.copy_(mean)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over all ranks (for steps run without DDP's own gradient synchronisation,
    e.g. several backward passes per step or gradients of a model copy)."""
    average_in_place([p.grad for p in parameters if p.grad is not None])


def average_buffers(module: nn.Module) -> None:
    """Mean of floating-point buffers (BatchNorm running statistics) over ranks."""
    average_in_place([b for b in module.buffers() if b.is_floating_point()])


def broadcast_buffers(module: nn.Module, source: int = 0) -> None:
    """Give every rank ``source``'s buffers (BatchNorm running statistics), as DDP does before each
    forward, for steps run without DDP's own synchronisation."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=source)


def global_mean(rows: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of ``rows`` on every rank together (a plain mean in one process)."""
    total = all_reduce_sum(torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])]))
    return total[:-1] / total[-1]


def gather_by_index(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], width: int, device: torch.device
) -> torch.Tensor:
    """Rows ``(index, values (n, width))`` from every rank assembled into one ``(N, width)`` tensor
    ordered by index, identical on every rank (``N`` = number of rows over all ranks)."""
    count = torch.tensor([float(sum(len(index) for index, _ in parts))], device=device)
    total = int(all_reduce_sum(count))
    out = torch.zeros((total, width), dtype=torch.float32, device=device)
    for index, values in parts:
        out[index.to(device).long()] = values.to(device=device, dtype=torch.float32)
    return all_reduce_sum(out)


def in_lockstep(batches: Iterable[dict], device: torch.device) -> Iterator[dict]:
    """Yield batches while every rank still has one (shards may differ by a batch): a loop with a
    collective per batch then never waits on a rank that has finished."""
    if not is_distributed():
        yield from batches
        return
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        have = torch.tensor([0.0 if batch is None else 1.0], device=device)
        if float(all_reduce_sum(have)) < world_size():
            return
        yield batch
