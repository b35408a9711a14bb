"""One worker for the two-process DDP tests of every method; importable by spawned processes.

Each rank trains with its half of every global batch and its shard (samples r, r + world, ...) of
a global training set of odd size, so that the ranks hold different numbers of epoch-data batches.
"""

from __future__ import annotations

import math

import torch
from torch.nn.parallel import DistributedDataParallel

from avb_testing import SHAPES, ListData, tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.models import build_model
from ddp_workers import DDPStep, flat_parameters

GLOBAL_BATCH, EPOCHS, STEPS = 8, 2, 2


class ShardData(ListData):
    """This rank's shard of global training and validation sets, in batches of 4 with indices."""

    def __init__(self, rank: int, world: int, train_size: int = 17, val_size: int = 11):
        self.total = train_size
        train, val = self.labelled(train_size, 1), self.labelled(val_size, 2)
        super().__init__(self.shard(train, rank, world), self.shard(val, rank, world))

    @staticmethod
    def labelled(size: int, seed: int) -> dict[str, torch.Tensor]:
        batch = tiny_batch(size, seed=seed)
        batch["label"] = torch.arange(size) % 5  # every class present
        return batch

    @staticmethod
    def shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        index = torch.arange(rank, len(batch["label"]), world)
        local = {**{key: value[index] for key, value in batch.items()}, "index": index}
        return [{key: value[i : i + 4] for key, value in local.items()} for i in range(0, len(index), 4)]

    def num_train_samples(self) -> int:
        return self.total


def no_norm_spec(method) -> dict:
    """The tiny spec with MLP encoders (no BatchNorm, whose batch statistics would differ between
    half and whole batches), adapted by the method."""
    spec = tiny_spec()
    spec["encoders"] = {m: {"kind": "mlp", "in_channels": math.prod(SHAPES[m]), "hidden": 8} for m in spec["encoders"]}
    return method.adapt_model_spec(spec)


def train_method(rank: int, world: int, name: str, params: dict, no_norm: bool, optimizer: str = "sgd") -> dict:
    """``EPOCHS`` epochs of ``STEPS`` steps of method ``name`` with the engine's hook order: the
    parameters, the logs after each step and each epoch, and the method's state at the end."""
    method = get_method(name, **params)
    torch.manual_seed(0)  # identical initial replicas
    model = build_model(no_norm_spec(method) if no_norm else method.adapt_model_spec(tiny_spec()))
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1), "adamw": lambda p: torch.optim.AdamW(p, lr=0.01)}[optimizer]
    optimizer = make(model.parameters())
    data = ShardData(rank, world)
    forward = model
    if world > 1 and not method.overrides_step:  # a head may leave a parameter unused (MMCosine's bias)
        forward = DistributedDataParallel(model, find_unused_parameters=True)
    method.setup(model, optimizer, data)
    logs = []
    for epoch in range(EPOCHS):
        method.on_epoch_start(epoch, model, data)
        for index in range(STEPS):
            batch = tiny_batch(GLOBAL_BATCH, seed=10 * epoch + index)
            half = {k: v[rank * GLOBAL_BATCH // world : (rank + 1) * GLOBAL_BATCH // world] for k, v in batch.items()}
            one_step(method, model, forward, optimizer, half, DDPStep(optimizer, epoch, index, STEPS))
            logs.append(copied_logs(method))
        method.on_epoch_end(epoch, model, data)
        logs.append(copied_logs(method))
    return {"params": flat_parameters(model), "logs": logs, "state": method.state_dict()}


def copied_logs(method) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in method.logs().items()}


def one_step(method, model, forward, optimizer, batch, step: DDPStep) -> None:
    """The method's own step (gradients averaged at ``step.step``), or the ordinary step with
    gradients averaged by DDP during backward."""
    if method.overrides_step:
        step.model = model
        method.training_step(model, batch, step)
        return
    output = forward(batch)
    optimizer.zero_grad(set_to_none=True)
    method.loss(output, batch).backward()
    method.after_backward(model, output, batch)
    optimizer.step()


def train_methods(rank: int, world: int, runs: dict[str, dict]) -> dict[str, dict]:
    """:func:`train_method` for every ``key: keyword arguments`` of ``runs``, in one process."""
    return {key: train_method(rank, world, **kwargs) for key, kwargs in runs.items()}
