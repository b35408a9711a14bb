"""Lightning callbacks of a training run: the non-finite guard, the per-epoch history and the random
generators' states. Each keeps its own state, saved in every checkpoint (``state_dict``) and restored
on resume (``load_state_dict``), so that a resumed run continues exactly."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ..errors import AvbalanceError
from ..outputs import write_text_atomic
from ..signals import StopSignals
from .resume import capture_rng, restore_rng

if TYPE_CHECKING:
    from .module import BalancedModule


class TrainingError(AvbalanceError):
    """Training cannot go on (e.g. non-finite gradients with ``trainer.nonfinite=stop``)."""


def finite_flag(parameters, device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor on ``device``: whether every gradient is finite (True without gradients).
    Computed on the device; nothing waits for it."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()


def gradients_finite(parameters) -> bool:
    """Whether every gradient is finite (True without gradients); one host synchronisation."""
    return bool(finite_flag(parameters, torch.device("cpu")))


def skips_on_device(optimizer: torch.optim.Optimizer, precision: str) -> bool:
    """Whether ``optimizer`` can skip a step itself from a device flag (torch's fused kernels read
    ``optimizer.found_inf``), with no step hook that would move parameters of a skipped step and
    no AMP grad scaler (which sets ``found_inf`` itself)."""
    fused = bool(optimizer.param_groups) and all(group.get("fused") for group in optimizer.param_groups)
    hooked = bool(getattr(optimizer, "_optimizer_step_post_hooks", None))  # e.g. methods' update scaling
    grad_scaler = precision in ("16", "16-mixed")  # bf16 and true half precision have none
    return fused and getattr(optimizer, "_step_supports_amp_scaling", False) and not hooked and not grad_scaler


class NonFiniteGuard(Callback):
    """``trainer.nonfinite``: a step with NaN/Inf gradients is skipped and counted (``skip``), or
    training stops (``stop``; fp16 overflows are routine and always skipped); ``off`` removes the
    check.

    ``skip`` with a fused optimizer (the built-in ``sgd`` on CPU and CUDA) never waits for the device:
    the finiteness flag goes to the optimizer as ``found_inf`` and its kernel leaves parameters and
    state unchanged, and the count stays on the device until read. Otherwise (``stop``, other
    optimizers, fp16) the check reads the flag (one host synchronisation per step) and a skipped
    step's gradients are gone (:meth:`BalancedModule.discard_step`) before the method modulates
    them: Lightning calls callbacks' ``on_before_optimizer_step`` before the module's."""

    def __init__(self, mode: str = "skip", precision: str = "32-true"):
        self.mode, self.precision = mode, str(precision)
        self._host_skipped = 0
        self._device_skipped: torch.Tensor | None = None  # the fused path's count, read when asked

    @property
    def skipped_steps(self) -> int:
        on_device = 0 if self._device_skipped is None else int(self._device_skipped)
        return self._host_skipped + on_device

    def on_before_optimizer_step(self, trainer: L.Trainer, module: BalancedModule, optimizer) -> None:
        if self.mode == "off":
            return
        if self.mode == "skip" and skips_on_device(optimizer, self.precision):
            self._flag_for_optimizer(module, optimizer)
            return
        if gradients_finite(module.parameters()):
            return
        if self.mode == "stop" and "16" not in self.precision:
            raise TrainingError(
                f"non-finite gradients at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"lower the learning rate, or set trainer.nonfinite=skip to skip such steps"
            )
        module.discard_step()
        self._host_skipped += 1

    def _flag_for_optimizer(self, module: BalancedModule, optimizer: torch.optim.Optimizer) -> None:
        found_inf = (~finite_flag(module.parameters(), module.device)).float()
        optimizer.found_inf = found_inf  # the fused step leaves every tensor as it was when this is 1
        previous = self._device_skipped
        self._device_skipped = found_inf if previous is None else previous + found_inf.to(previous.device)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._host_skipped, self._device_skipped = int(state["skipped_steps"]), None


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


class TrainingInterrupted(Exception):
    """Training stopped by a signal, after saving the state to resume from (``signum``: which)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopOnSignal(Callback):
    """SIGTERM or SIGINT during training: the step under way finishes, ``last`` is saved (the state a
    step checkpoint holds, so ``--resume auto`` continues exactly) and :class:`TrainingInterrupted`
    ends the fit. A second signal stops at once."""

    def __init__(self, last: Path):
        self.stop, self.last = StopSignals(at_once=False), last

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Over Lightning's own SIGTERM handler (registered after on_fit_start), which would stop
        # without saving, and under DDP would broadcast from inside the handler.
        self.stop.install()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        received = self.stop.received is not None
        if trainer.world_size > 1:  # every process stops at the same step
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        trainer.save_checkpoint(self.last)
        raise TrainingInterrupted(
            self.stop.received or signal.SIGTERM,
            f"interrupted at epoch {trainer.current_epoch} step {trainer.global_step}; resume with --resume auto",
        )


class RunFolderGuard(Callback):
    """Writes the run's ``config.yaml`` when training starts (everything is built by then), and,
    until the run has saved its first checkpoint, puts the folder back as it was after a failure:
    a new folder is removed; in an existing one, files the run added are removed and the top-level
    files it rewrote (config.yaml, hparams.yaml, metrics.csv, ...) get their old bytes back."""

    def __init__(self, out: Path, config_text: str):
        self.out, self.config_text, self.existed, self.committed = out, config_text, out.exists(), False
        self.before = set(out.rglob("*")) if self.existed else set()
        self.new_root = out  # the outermost folder the run creates (runs/a/b when runs/ does not exist)
        while not self.new_root.parent.exists() and self.new_root.parent != self.new_root:
            self.new_root = self.new_root.parent
        self.saved = {path: path.read_bytes() for path in out.iterdir() if path.is_file()} if self.existed else {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out / "config.yaml", self.config_text)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.committed = True

    def restore(self) -> None:
        if self.committed:
            return
        if not self.existed:
            shutil.rmtree(self.new_root, ignore_errors=True)
            return
        for path in sorted(self.out.rglob("*"), reverse=True):  # children before their folders
            if path not in self.before:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        for path, content in self.saved.items():
            if not path.is_file() or path.read_bytes() != content:
                path.write_bytes(content)
