"""The hook protocol every balancing method implements.

A method plugs into a training step through a few hooks, in this order::

    method.setup(model, optimizer)              # once, before training
    for epoch in range(epochs):
        method.on_epoch_start(epoch, model)
        for batch in loader:
            output = model(batch)
            loss = method.loss(output, batch)      # the objective
            optimizer.zero_grad(); loss.backward()
            method.after_backward(model, output, batch)   # gradient modulation
            optimizer.step()
        method.on_epoch_end(epoch, model)

``after_backward`` runs after gradients are complete: after DDP has averaged them and after AMP
has unscaled them, before ``optimizer.step`` (and before gradient clipping). With gradient
accumulation, ``loss`` is called once per micro-batch and ``after_backward`` once per optimizer
step; methods that use batch statistics accumulate them over the micro-batches in ``loss``.

Methods never know the trainer. The Lightning engine is one user of this protocol; a plain PyTorch
loop is another.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models.model import ModelOutput, MultimodalModel


class Method:
    """Base class: joint cross-entropy on the fused logits and no-op hooks."""

    name: ClassVar[str] = "?"
    min_modalities: ClassVar[int] = 1
    max_modalities: ClassVar[int | None] = None
    #: True for methods that act only by rescaling gradients (cancelled by Adam's normalisation).
    scales_gradients: ClassVar[bool] = False

    def __init__(self) -> None:
        self.epoch = 0
        self._logs: dict[str, torch.Tensor] = {}
        self._warned_optimizer = False

    # -- set-up ----------------------------------------------------------------------------------
    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Return the model spec this method needs (e.g. MMCosine's cosine head). Default: as is."""
        return spec

    def check_modalities(self, modalities: tuple[str, ...]) -> None:
        count = len(modalities)
        if count < self.min_modalities or (self.max_modalities is not None and count > self.max_modalities):
            allowed = f"{self.min_modalities}+" if self.max_modalities is None else (
                f"{self.min_modalities}" if self.min_modalities == self.max_modalities
                else f"{self.min_modalities}-{self.max_modalities}")
            raise ValueError(
                f"method {self.name!r} needs {allowed} modalities, got {count} ({', '.join(modalities) or 'none'})"
            )

    def setup(self, model: MultimodalModel, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Check the model fits the method; warn once when an optimizer would cancel the method."""
        self.check_modalities(tuple(model.modalities))
        if optimizer is not None and self.scales_gradients and not self._warned_optimizer:
            if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
                self._warned_optimizer = True
                warnings.warn(
                    f"method {self.name!r} rescales gradients, which {type(optimizer).__name__} largely "
                    "cancels (its second-moment normalisation undoes a constant scale); use SGD with "
                    "momentum to reproduce the paper",
                    UserWarning,
                    stacklevel=2,
                )

    # -- hooks -----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, model: nn.Module | None = None) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, model: nn.Module | None = None) -> None:
        pass

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(output.logits, batch["label"])

    def after_backward(self, model: MultimodalModel, output: ModelOutput | None,
                       batch: Mapping[str, torch.Tensor] | None) -> None:
        pass

    # -- logging and state -----------------------------------------------------------------------
    def logs(self) -> dict[str, torch.Tensor]:
        """Scalars (device tensors) describing the last step, e.g. ``coeff/audio``."""
        return dict(self._logs)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
