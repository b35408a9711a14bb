"""Lightning callbacks of a training run: the non-finite guard, the per-epoch history and the random
generators' states. Each keeps its own state, saved in every checkpoint (``state_dict``) and restored
on resume (``load_state_dict``), so that a resumed run continues exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..errors import AvbalanceError
from .resume import capture_rng, restore_rng

if TYPE_CHECKING:
    from .module import BalancedModule


class TrainingError(AvbalanceError):
    """Training cannot go on (e.g. non-finite gradients with ``trainer.nonfinite=stop``)."""


def gradients_finite(parameters) -> bool:
    """Whether every gradient is finite (True without gradients); one host synchronisation."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


class NonFiniteGuard(Callback):
    """``trainer.nonfinite``: a step with NaN/Inf gradients is skipped and counted (``skip``), or
    training stops (``stop``; fp16 overflows are routine and always skipped); ``off`` removes the
    check and its host synchronisation.

    Lightning calls callbacks' ``on_before_optimizer_step`` before the module's, so a skipped step's
    gradients are gone (:meth:`BalancedModule.discard_step`) before the method modulates them."""

    def __init__(self, mode: str = "skip", precision: str = "32-true"):
        self.mode, self.precision = mode, str(precision)
        self.skipped_steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, module: BalancedModule, optimizer) -> None:
        if self.mode == "off" or gradients_finite(module.parameters()):
            return
        if self.mode == "stop" and "16" not in self.precision:
            raise TrainingError(
                f"non-finite gradients at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"lower the learning rate, or set trainer.nonfinite=skip to skip such steps"
            )
        module.discard_step()
        self.skipped_steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])


class EpochHistory(Callback):
    """One record per epoch, taken when validation ends (before the epoch's end hooks change the
    model): the epoch's training figures, the steps skipped so far and the validation metrics.

    Every checkpoint also carries the records up to it as ``checkpoint["avbalance"]["history"]``,
    where tools read them without Lightning."""

    def __init__(self, guard: NonFiniteGuard):
        self.guard = guard
        self.records: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, module: BalancedModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        record = {
            "epoch": trainer.current_epoch,
            **module.train_summary(),
            "train/skipped_steps": self.guard.skipped_steps,
        }
        record.update({f"val/{key}": value for key, value in module.validation_results.items()})
        self.records.append(record)

    def on_save_checkpoint(self, trainer: L.Trainer, module: BalancedModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("avbalance", {})["history"] = list(self.records)

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state["records"])


class GeneratorStates(Callback):
    """Every global random generator's state (torch, CUDA, numpy, Python), restored on resume: with
    the data order a function of (seed, epoch), a resumed run draws what it would have drawn."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)
