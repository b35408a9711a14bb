"""Cross-rank reductions for methods whose statistics must be global under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (a no-op in a single process). Returns a new tensor."""
    if not is_distributed():
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def average_gradients(parameters) -> None:
    """Average ``.grad`` over all ranks in one flat all-reduce (for steps run without DDP's own
    gradient synchronisation, e.g. several backward passes per step)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_buffers(module: torch.nn.Module, source: int = 0) -> None:
    """Give every rank ``source``'s buffers (BatchNorm running statistics), as DDP does before each
    forward, for steps run without DDP's own synchronisation."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=source)
