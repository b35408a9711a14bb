"""Extra forward passes that leave the model as they found it: train/eval modes and buffers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run a block with every module in train (or eval) mode; restore each module's mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block and put every buffer (BatchNorm running statistics, batch counters) back as it
    was: a train-mode extra forward then uses batch statistics without updating the running ones."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
