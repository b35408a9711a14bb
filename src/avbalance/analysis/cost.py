"""What a model and its training method cost: parameters, FLOPs, peak memory and time per step.

* **Parameters**: ``sum(p.numel())`` over the model, each encoder (``model.encoders[m]``) and the
  fusion head.
* **FLOPs** come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix
  multiplications and convolutions only, two FLOPs per multiply-accumulate: a linear layer
  ``in -> out`` costs ``2 * in * out`` FLOPs per sample (its bias, activations, normalisation and
  pooling are not counted). MACs are FLOPs / 2. ``flops_per_sample`` is one inference forward
  pass; ``step_flops_per_sample`` is one training step of the method (its forward passes, extra
  coalition or teacher passes, and the backward), divided by the batch size.
* **Time per step**: the method's real step (``Method.training_step`` with a
  :class:`~avbalance.methods.base.PlainStep`: forward, loss, backward, ``after_backward``, optimizer
  step) on one batch, repeated ``steps`` times after one untimed warm-up step (the step whose FLOPs
  are counted); the mean, in ms.
* **Peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps (tensors only);
  on CPU the peak resident set size of the whole process (``resource.getrusage``), an upper bound
  that also holds the Python runtime, the data and everything loaded before.

The measurement trains a copy of the model: the caller's model and its weights are left untouched.
"""

from __future__ import annotations

import copy
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from ..data.collate import collate_samples
from ..methods.base import Method, PlainStep
from .runs import LoadedRun

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """``{"total", "encoders": {m: n}, "head"}`` (``encoders``/``head`` only when the model has them)."""
    counts: dict[str, Any] = {"total": sum(p.numel() for p in model.parameters())}
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, nn.ModuleDict):
        counts["encoders"] = {m: sum(p.numel() for p in e.parameters()) for m, e in encoders.items()}
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        counts["head"] = sum(p.numel() for p in head.parameters())
    return counts


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, Mapping):
        return len(inputs["label"]) if "label" in inputs else len(next(iter(inputs.values())))
    return len(inputs)


def counted_flops(run: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def forward_flops_per_sample(model: nn.Module, inputs: Any) -> float:
    """FLOPs of one inference forward pass (eval mode, no gradients) per sample."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        flops = counted_flops(lambda: model(inputs))
    model.train(was_training)
    return flops / batch_size_of(inputs)


class OneBatchData:
    """:class:`~avbalance.methods.base.EpochData` serving one batch, for methods whose ``setup`` or
    epoch hooks read data (prototypes, teacher pre-training) while their step is measured."""

    def __init__(self, batch: Mapping[str, torch.Tensor]):
        self.batch = {**batch, "index": torch.arange(batch_size_of(batch), device=batch["label"].device)}
        self.device = batch["label"].device

    def train_batches(self, limit: int | None = None, shuffle: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        return iter([self.batch][:limit])

    def val_batches(self, limit: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        return iter([self.batch][:limit])

    def num_train_samples(self) -> int:
        return batch_size_of(self.batch)


def prepared_step(
    model: nn.Module, method: Method, batch: Mapping[str, torch.Tensor], make_optimizer: OptimizerFactory
) -> Callable[[], Any]:
    """The method's training step on a copy of ``model``, set up as at the start of training."""
    model = copy.deepcopy(model).train()
    method = copy.deepcopy(method)
    optimizer = make_optimizer(model.parameters())
    data = OneBatchData(batch)
    method.setup(model, optimizer, data)
    method.on_epoch_start(0, model, data)
    step = PlainStep(optimizer)
    return lambda: method.training_step(model, batch, step)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def timed_steps(step: Callable[[], Any], device: torch.device, steps: int) -> tuple[float, float]:
    """``(ms per step, peak memory MB)`` over ``steps`` steps (the caller has run a warm-up step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - started) / steps, peak_memory_mb(device)


def default_optimizer(parameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=1e-3, momentum=0.9)


def model_cost(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    method: Method | None = None,
    make_optimizer: OptimizerFactory = default_optimizer,
    steps: int = 3,
) -> dict[str, Any]:
    """Parameters, inference FLOPs per sample and, with ``method``, the FLOPs per sample of one
    training step, the time per step (ms) and the peak memory (MB) of ``method`` training ``model``
    on ``batch`` (on the model's device). ``make_optimizer(parameters)`` builds the step's optimizer."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    cost: dict[str, Any] = {
        "parameters": parameter_counts(model),
        "flops_per_sample": forward_flops_per_sample(model, batch),
        "batch_size": batch_size_of(batch),
        "device": device.type,
    }
    if method is None:
        return cost
    cost["method"] = method.name
    step = prepared_step(model, method, batch, make_optimizer)
    cost["step_flops_per_sample"] = counted_flops(step) / cost["batch_size"]  # the untimed warm-up step
    ms, memory = timed_steps(step, device, steps)
    cost.update(ms_per_step=ms, peak_memory_mb=memory, timed_steps=steps)
    cost["memory_measure"] = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    return cost


def run_cost(run: LoadedRun, steps: int = 3) -> dict[str, Any]:
    """:func:`model_cost` of a trained run: its method and optimizer as configured, on its first
    training batch (training batch size, dataset order)."""
    from ..engine.optim import build_optimizer
    from ..engine.run import build_method

    config = run.config
    loader = DataLoader(
        run.datamodule.train_set, batch_size=config.data.batch_size, shuffle=False, collate_fn=collate_samples
    )
    batch = next(iter(loader))
    return model_cost(run.model, batch, build_method(config), lambda p: build_optimizer(config, p), steps)
