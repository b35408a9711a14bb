"""Worker functions for the two-process (gloo, CPU) DDP tests; importable by spawned processes."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.base import PlainStep
from avbalance.methods.distributed import average_gradients
from avbalance.models import ConcatFusion, MultimodalModel, build_model


def run_workers(function, world: int, tmp_path, **kwargs) -> list:
    """Run ``function(rank, world, **kwargs)`` in ``world`` gloo processes; return their results."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(
        _entry, args=(world, port, function, str(tmp_path), kwargs), nprocs=world, start_method="spawn", join=True
    )
    return [torch.load(os.path.join(tmp_path, f"result.{rank}"), weights_only=False) for rank in range(world)]


def _entry(rank, world, port, function, folder, kwargs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(function(rank, world, **kwargs), os.path.join(folder, f"result.{rank}"))
    finally:
        dist.destroy_process_group()


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class DDPStep(PlainStep):
    """StepContext for a method's own step under DDP: local backward passes, one average at the step."""

    def step(self, before_step=None) -> None:
        average_gradients(self.model.parameters())
        super().step(before_step)


def train_steps(
    rank,
    world,
    method_name="ogm_ge",
    method_params=None,
    steps=3,
    batch_size=6,
    modalities=("audio", "visual"),
    fusion="concat",
):
    """K steps of ``method`` with a different local batch on each rank; returns the parameters."""
    method = get_method(method_name, **(method_params or {}))
    torch.manual_seed(0)  # identical initial replicas
    spec = method.adapt_model_spec(tiny_spec(fusion, modalities=modalities))
    model = build_model(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.setup(model, optimizer if rank == 0 else None)
    method.on_epoch_start(0, model)
    if method.overrides_step:
        for step in range(steps):
            batch = tiny_batch(batch_size, modalities=modalities, seed=100 * step + rank)
            context = DDPStep(optimizer, 0, step, steps)
            context.model = model
            method.training_step(model, batch, context)
    else:
        ddp = DistributedDataParallel(model)
        for step in range(steps):
            batch = tiny_batch(batch_size, modalities=modalities, seed=100 * step + rank)
            output = ddp(batch)
            loss = method.loss(output, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.after_backward(model, output, batch)
            optimizer.step()
    return flat_parameters(model)


class _ConvNoNorm(nn.Module):
    """A small conv encoder without BatchNorm: per-rank batches then add up exactly to one batch."""

    def __init__(self, channels: int, clip: bool):
        super().__init__()
        conv = nn.Conv3d if clip else nn.Conv2d
        self.conv = conv(channels, 6, 3, padding=1)
        self.out_dim = 6

    def forward(self, x):
        return torch.relu(self.conv(x)).flatten(2).mean(2)


def no_norm_model() -> MultimodalModel:
    torch.manual_seed(0)
    return MultimodalModel(
        {"audio": _ConvNoNorm(1, False), "visual": _ConvNoNorm(3, True)},
        ConcatFusion({"audio": 6, "visual": 6}, num_classes=5),
    )


def ogm_batches(steps: int, batch_size: int):
    return [tiny_batch(batch_size, seed=step) for step in range(steps)]


def ogm_run(model, batches, alpha, ddp_wrap=False):
    method = get_method("ogm", alpha=alpha)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    forward = DistributedDataParallel(model) if ddp_wrap else model
    for batch in batches:
        output = forward(batch)
        optimizer.zero_grad(set_to_none=True)
        method.loss(output, batch).backward()
        method.after_backward(model, output, batch)
        optimizer.step()
    return flat_parameters(model), method.logs()


def ogm_sharded(rank, world, steps=3, batch_size=8, alpha=0.6):
    """Each rank trains on its half of every global batch."""
    half = batch_size // world
    shards = [
        {k: v[rank * half : (rank + 1) * half] for k, v in batch.items()} for batch in ogm_batches(steps, batch_size)
    ]
    return ogm_run(no_norm_model(), shards, alpha, ddp_wrap=True)
