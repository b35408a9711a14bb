"""The hook protocol every balancing method implements.

A method plugs into a training step through a few hooks, in this order::

    method.set_run_seed(seed)                   # the run's seed, for the method's random draws
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

Three optional extensions serve methods that need more than a loss and a gradient hook:

* **Step override** (``overrides_step = True``): the method runs the whole training step in
  ``training_step(model, batch, step)`` -- several backward passes, several optimizer steps,
  alternating updates -- through a :class:`StepContext` (``step.backward``, ``step.step``,
  ``step.zero_grad``). The engine then uses manual optimisation; in a plain loop use
  :class:`PlainStep`.
* **Epoch data** (:class:`EpochData`): ``setup`` and the epoch hooks receive ``data``, which yields
  training and validation batches on the model's device (this rank's shard under DDP), for
  prototypes, re-initialisation diagnostics, weight estimation or teacher pre-training.
* **Resampling** (``resamples_data = True``): ``train_entries()`` returns the training set to use in
  the next epoch as ``(index, modalities to zero)`` pairs; the engine rebuilds the loader from it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..models.model import ModelOutput, MultimodalModel

# draw_seed = (run seed * multiplier + offset) mod 2**32: one-to-one on the seeds (odd multiplier) and
# valid everywhere a seed is taken (torch generators, scikit-learn's random_state).
RUN_SEED_MULTIPLIER = 1_000_033
RUN_SEED_OFFSET = 0x6D657468


class StepContext(Protocol):
    """What a method that overrides the training step uses instead of calling the optimizer."""

    optimizer: torch.optim.Optimizer
    epoch: int
    batch_idx: int
    num_batches: int

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Back-propagate ``loss`` (AMP loss scaling and DDP gradient averaging included)."""

    def step(self, before_step: Callable[[], None] | None = None) -> None:
        """Take an optimizer step; ``before_step`` runs once gradients are final (unscaled),
        before clipping and the update: the place for gradient surgery."""

    def zero_grad(self) -> None:
        """Set every gradient to None (parameters without a gradient are then not updated)."""


class PlainStep:
    """:class:`StepContext` for a plain PyTorch loop."""

    def __init__(self, optimizer: torch.optim.Optimizer, epoch: int = 0, batch_idx: int = 0, num_batches: int = 1):
        self.optimizer, self.epoch, self.batch_idx, self.num_batches = optimizer, epoch, batch_idx, num_batches

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        loss.backward(retain_graph=retain_graph)

    def step(self, before_step: Callable[[], None] | None = None) -> None:
        if before_step is not None:
            before_step()
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


class EpochData(Protocol):
    """Access to the data outside the training step (this rank's shard under DDP)."""

    device: torch.device

    def train_batches(self, limit: int | None = None, shuffle: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches (unshuffled unless asked; the same order on every rank), on ``device``.
        Each batch also has ``"index"``: every sample's index in the whole training set (the
        indices ``train_entries`` refers to). Under DDP rank r gets indices r, r + world, ..."""

    def val_batches(self, limit: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Validation batches on ``device`` (never the test split)."""

    def num_train_samples(self) -> int:
        """Size of the whole training set (all ranks)."""


class Method:
    """Base class: joint cross-entropy on the fused logits and no-op hooks."""

    name: ClassVar[str] = "?"
    min_modalities: ClassVar[int] = 1
    max_modalities: ClassVar[int | None] = None
    #: True for methods that act only by rescaling gradients (cancelled by Adam's normalisation).
    scales_gradients: ClassVar[bool] = False
    #: True for methods that run the whole training step themselves (see ``training_step``).
    overrides_step: ClassVar[bool] = False
    #: True for methods that choose the training samples of each epoch (see ``train_entries``).
    resamples_data: ClassVar[bool] = False
    #: The method's own ``seed`` hyperparameter (methods with random draws take one); None: follow the run seed.
    seed: int | None = None

    def __init__(self) -> None:
        self.epoch = 0
        self.run_seed = 0
        self._logs: dict[str, torch.Tensor] = {}
        self._warned_optimizer = False

    # -- randomness ------------------------------------------------------------------------------
    def set_run_seed(self, seed: int) -> None:
        """Record the run's seed (``trainer.seed``) and re-seed the method's generators from it.

        The engine calls this right after building the method, before ``setup`` and before a resumed
        run's ``load_state_dict`` (which restores the generators' positions); a plain PyTorch loop
        calls it likewise. Without it the run seed is 0."""
        self.run_seed = int(seed)
        self.reset_generators()

    @property
    def draw_seed(self) -> int:
        """The seed of the method's random draws: its own ``seed`` when set, else one derived from the
        run seed (so runs with different seeds draw differently). The derivation keeps the method's
        stream apart from the run's other generators seeded with the run seed itself."""
        if self.seed is not None:
            return self.seed
        return (self.run_seed * RUN_SEED_MULTIPLIER + RUN_SEED_OFFSET) % 2**32

    def reset_generators(self) -> None:
        """Seed the method's generators from ``draw_seed``; methods with random draws override this."""

    # -- set-up ----------------------------------------------------------------------------------
    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Return the model spec this method needs (e.g. MMCosine's cosine head). Default: as is."""
        return spec

    def check_modalities(self, modalities: tuple[str, ...]) -> None:
        count = len(modalities)
        if count < self.min_modalities or (self.max_modalities is not None and count > self.max_modalities):
            allowed = (
                f"{self.min_modalities}+"
                if self.max_modalities is None
                else (
                    f"{self.min_modalities}"
                    if self.min_modalities == self.max_modalities
                    else f"{self.min_modalities}-{self.max_modalities}"
                )
            )
            raise ValueError(
                f"method {self.name!r} needs {allowed} modalities, got {count} ({', '.join(modalities) or 'none'})"
            )

    def setup(
        self, model: MultimodalModel, optimizer: torch.optim.Optimizer | None = None, data: EpochData | None = None
    ) -> None:
        """Check the model fits the method; warn once when an optimizer would cancel the method.
        Methods needing data before training (e.g. teacher pre-training) use ``data``."""
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
    def on_epoch_start(self, epoch: int, model: nn.Module | None = None, data: EpochData | None = None) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, model: nn.Module | None = None, data: EpochData | None = None) -> None:
        pass

    def training_step(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], step: StepContext
    ) -> torch.Tensor:
        """The whole step, for methods with ``overrides_step``; returns the (detached) loss to log.
        This default is the ordinary step, so an override can start from it."""
        output = model(batch)
        loss = self.loss(output, batch)
        step.zero_grad()
        step.backward(loss)
        step.step(lambda: self.after_backward(model, output, batch))
        return loss.detach()

    def discard_step(self) -> None:
        """The step's gradients were thrown away (non-finite): forget what ``loss`` recorded for it."""

    def train_entries(self) -> Sequence[tuple[int, tuple[str, ...]]] | None:
        """For ``resamples_data`` methods: the next epoch's training samples as ``(index into the
        training set, modalities to zero)``; None keeps the plain training set."""
        return None

    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(output.logits, batch["label"])

    def after_backward(
        self, model: MultimodalModel, output: ModelOutput | None, batch: Mapping[str, torch.Tensor] | None
    ) -> None:
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
