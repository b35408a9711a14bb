"""Optimizers and learning-rate schedulers by name (``optim.name``, ``optim.scheduler``).

Each builder takes the parameters (or the optimizer) and the settings it uses, by the names of the
config's keys; :func:`build_optimizer` and :func:`build_scheduler` pass it exactly those. A new
optimizer is one registered function::

    @OPTIMIZERS.register("rmsprop")
    def rmsprop(parameters, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from pydantic_core import PydanticCustomError

from ..registry import Registry

if TYPE_CHECKING:
    from .config import RunConfig

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer", sorted_names=False)
SCHEDULERS: Registry[Callable[..., Any]] = Registry("scheduler", sorted_names=False)


@OPTIMIZERS.register("sgd")
def sgd(parameters: Iterable, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(parameters: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(parameters: Iterable, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, step_size: int, gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate times ``gamma`` every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to zero over the run's epochs."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer) -> None:
    """A constant learning rate."""
    return None


def _settings(config: RunConfig) -> dict[str, Any]:
    return {**config.optim.model_dump(), "epochs": config.trainer.epochs}


def _build(registry: Registry, name: str, target: Any, config: RunConfig) -> Any:
    settings = _settings(config)
    return registry.build(name, target, **{key: settings[key] for key in registry.defaults(name, skip=1)})


def build_optimizer(config: RunConfig, parameters: Iterable) -> torch.optim.Optimizer:
    return _build(OPTIMIZERS, config.optim.name, parameters, config)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    return _build(SCHEDULERS, config.optim.scheduler, optimizer, config)


def check_registered(registry: Registry, name: str) -> str:
    """``name`` when ``registry`` has it; otherwise a pydantic error worded like pydantic's own for a
    fixed set of choices ("Input should be 'sgd', 'adam' or 'adamw'")."""
    if name in registry:
        return name
    choices = [repr(choice) for choice in registry.names()]
    expected = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
    raise PydanticCustomError("unknown_name", "Input should be {expected}", {"expected": expected})
