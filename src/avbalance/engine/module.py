"""The LightningModule: the method protocol (:mod:`avbalance.methods.base`) on Lightning.

A training batch goes, in this file::

    training_step:                 output = model(batch); loss = method.loss(output, batch)
    (Lightning)                    backward of the returned loss (AMP scaling, DDP averaging)
    on_before_optimizer_step:      method.after_backward(model, output, batch)   # gradients final, unscaled
    (Lightning)                    gradient clipping, optimizer.step()

A method with ``overrides_step`` runs the step itself through :class:`LightningStep` (manual
optimisation): its ``backward`` is Lightning's, its ``step(before_step)`` runs ``before_step`` where
``after_backward`` runs above. The epoch hooks are the method's ``on_epoch_start`` / ``on_epoch_end``.

Everything else a run needs lives outside: the non-finite guard, the history and the random states
are callbacks (:mod:`.callbacks`), resampling is the data module's (:mod:`.datamodule`), optimizers
and schedulers come from :mod:`.optim`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import torch

from ..methods.base import Method
from ..methods.distributed import average_gradients, broadcast_buffers
from ..metrics import MultimodalMetrics
from ..models.model import ModelOutput, MultimodalModel
from .config import RunConfig
from .epoch_data import LoaderEpochData
from .optim import build_optimizer, build_scheduler, match_layouts, parameter_groups

#: oneDNN's 1x1 strided convolution computes wrong weight gradients, or writes past its workspace
#: and corrupts the heap, for channels-last inputs with fewer input channels per group than its
#: channel block (8 with AVX2, 16 with AVX-512): uxlfoundation/oneDNN#6035, in the oneDNN of
#: torch 2.14. A ResNet's downsampling shortcut at widths below 16 is such a convolution.
ONEDNN_CHANNEL_BLOCK = 16


def channels_last_is_safe(conv: torch.nn.Conv2d) -> bool:
    """Whether ``conv`` trains correctly in channels-last memory format (see ``ONEDNN_CHANNEL_BLOCK``)."""
    pointwise = all(size == 1 for size in conv.kernel_size)
    strided = any(step > 1 for step in conv.stride)
    return not (pointwise and strided and conv.in_channels // conv.groups < ONEDNN_CHANNEL_BLOCK)


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def to_channels_last(model: torch.nn.Module) -> None:
    """Every 2-D convolution's weights in channels-last memory format, where CPU (oneDNN) and CUDA
    (cuDNN) convolutions run fastest; their outputs follow, so activations need no conversion. The
    few convolutions for which that is not safe (:func:`channels_last_is_safe`) keep contiguous
    weights and get their input made contiguous, which makes torch run them in the plain layout."""
    for module in model.modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        if channels_last_is_safe(module):
            module.to(memory_format=torch.channels_last)
        elif _contiguous_input not in module._forward_pre_hooks.values():  # Lightning may call this again
            module.register_forward_pre_hook(_contiguous_input)


def compiles_on(device: torch.device) -> bool:
    """Whether ``trainer.compile`` compiles on ``device`` (CUDA); elsewhere it warns and trains uncompiled."""
    if device.type == "cuda":
        return True
    warnings.warn(
        f"trainer.compile=true: torch.compile is used on CUDA only; training on {device.type} uncompiled",
        UserWarning,
        stacklevel=2,
    )
    return False


class EvaluatedModel(L.LightningModule):
    """A multimodal model with its validation and test metrics (fused and per modality).

    ``channels_last`` puts the 2-D convolutions in channels-last memory format, ``compile_model`` runs
    the model through ``torch.compile`` (CUDA only): both when the trainer sets the model up."""

    def __init__(
        self, model: MultimodalModel, num_classes: int, channels_last: bool = False, compile_model: bool = False
    ):
        super().__init__()
        self.model = model
        self.val_metrics = MultimodalMetrics(num_classes, model.modalities)
        self.test_metrics = MultimodalMetrics(num_classes, model.modalities)
        self.validation_results: dict[str, float] = {}  # of the last validation
        self.channels_last, self.compile_model, self.compiled = channels_last, compile_model, False

    def configure_model(self) -> None:
        # Lightning calls this before each fit / validate / test, before building the optimizer.
        if self.channels_last:
            to_channels_last(self.model)
        if self.compile_model and not self.compiled and compiles_on(self.trainer.strategy.root_device):
            self.model.compile()  # in place: parameter names and checkpoints stay as they are
            self.compiled = True

    def _evaluate(self, metrics: MultimodalMetrics, batch: dict[str, torch.Tensor]) -> None:
        output = self.model(batch)
        metrics.update(output.logits, output.unimodal_logits, batch["label"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(self.val_metrics, batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(self.test_metrics, batch)

    def _publish(self, metrics: MultimodalMetrics, split: str) -> dict[str, float]:
        results = metrics.compute()
        metrics.reset()
        self.log_dict({f"{split}/{k}": v for k, v in results.items()}, sync_dist=False)  # already global
        return results

    def on_validation_epoch_end(self) -> None:
        self.validation_results = self._publish(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._publish(self.test_metrics, "test")


class BalancedModule(EvaluatedModel):
    """``model`` trained with ``method``; ``config`` and ``model_spec`` go into every checkpoint, so
    that the run can be rebuilt from it (:func:`avbalance.engine.loading.load_run`)."""

    def __init__(self, model: MultimodalModel, method: Method, config: RunConfig, model_spec: dict[str, Any]):
        trainer = config.trainer
        super().__init__(model, model_spec["num_classes"], trainer.channels_last, trainer.compile)
        self.method, self.config, self.model_spec = method, config, model_spec
        self.train_metrics = MultimodalMetrics(model_spec["num_classes"], model.modalities, full=False)
        # Methods that run the whole step themselves get manual optimisation (see LightningStep).
        self.automatic_optimization = not method.overrides_step
        self._gradient_hook: Callable[[], None] | None = None  # runs once this step's gradients are final
        self._epoch_data: LoaderEpochData | None = None
        self._loss_sum, self._loss_count = torch.zeros(()), 0

    def configure_optimizers(self):
        optimizer = build_optimizer(self.config, parameter_groups(self.config, self.model))
        scheduler = build_scheduler(self.config, optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- the method's epoch hooks ------------------------------------------------------------------
    def epoch_data(self) -> LoaderEpochData | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return None
        data = self.config.data
        if self._epoch_data is None:  # one instance per run: it numbers each epoch's shuffled passes
            self._epoch_data = LoaderEpochData(
                datamodule.train_set,
                datamodule.val_set,
                data.eval_batch_size or data.batch_size,
                self.device,
                data.loader_workers(self.config.trainer.deterministic),
                self.config.trainer.seed,
                self.current_epoch,
            )
        self._epoch_data.set_epoch(self.current_epoch)
        return self._epoch_data

    def on_fit_start(self) -> None:
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        with warnings.catch_warnings():
            if not self.trainer.is_global_zero:  # warn once, not once per rank
                warnings.simplefilter("ignore")
            self.method.setup(self.model, optimizer, data=self.epoch_data())

    def on_train_epoch_start(self) -> None:
        self.method.on_epoch_start(self.current_epoch, self.model, self.epoch_data())
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    def on_train_epoch_end(self) -> None:
        # After validation: the epoch's record and best checkpoint hold the weights before this hook.
        self.method.on_epoch_end(self.current_epoch, self.model, self.epoch_data())
        if not self.automatic_optimization:  # Lightning steps schedulers only in automatic mode
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    # -- the step ----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self.automatic_optimization:
            loss = self.method.training_step(self.model, batch, LightningStep(self, batch_idx))
        else:
            output = self.model(batch)
            loss = self.method.loss(output, batch)
            self.train_metrics.update(
                output.logits.detach(), {m: z.detach() for m, z in output.unimodal_logits.items()}, batch["label"]
            )
            self._gradient_hook = partial(self._after_backward, output, batch)  # Lightning back-propagates loss
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_count += 1
        self.log(
            "train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"])
        )
        if not self.automatic_optimization:
            self._log_method()
        return loss

    def _after_backward(self, output: ModelOutput, batch: dict[str, torch.Tensor]) -> None:
        self.method.after_backward(self.model, output, batch)
        self._log_method()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after backward, DDP's gradient averaging and AMP unscaling, before
        # gradient clipping and the optimizer step: where gradient modulation belongs.
        hook, self._gradient_hook = self._gradient_hook, None
        if hook is not None:
            hook()
        match_layouts(optimizer)  # the method may have set gradients of another memory layout
        clip = self.config.trainer.gradient_clip_val
        if clip and not self.automatic_optimization:  # Lightning clips only in automatic optimisation
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def manual_step(self, before_step: Callable[[], None] | None = None) -> None:
        """An optimizer step in manual optimisation: ``before_step`` runs in
        :meth:`on_before_optimizer_step`, once gradients are averaged and unscaled."""
        average_gradients(self.model.parameters())  # no-op in one process
        self._gradient_hook = before_step
        self.optimizers().step()

    def discard_step(self) -> None:
        """Throw this step's gradients away (the non-finite guard): every gradient set to None, so
        neither momentum nor weight decay moves a parameter, and the method forgets the step."""
        for parameter in self.model.parameters():
            parameter.grad = None
        self._gradient_hook = None
        self.method.discard_step()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # A method running its own step may back-propagate several times per batch, which DDP's
        # reducer does not allow: its gradients are averaged in manual_step instead.
        wrapper = self.trainer.strategy.model
        if not self.automatic_optimization and hasattr(wrapper, "require_backward_grad_sync"):
            wrapper.require_backward_grad_sync = False

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.automatic_optimization:  # DDP did not broadcast buffers for these steps
            broadcast_buffers(self.model)

    def _log_method(self) -> None:
        logs = self.method.logs()
        if logs:
            self.log_dict({f"method/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=True)

    def train_summary(self) -> dict[str, float]:
        """The epoch's training figures, read when validation ends (Lightning validates before the
        epoch ends): the mean loss, and the outputs' metrics unless the method runs its own step."""
        record = {}
        if self.automatic_optimization:
            record = {f"train/{k}": v for k, v in self.train_metrics.compute().items() if k != "samples"}
            self.train_metrics.reset()
        record["train/loss"] = float(self._loss_sum) / max(self._loss_count, 1)
        return record

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("avbalance", {}).update(
            model_spec=self.model_spec, config=self.config.model_dump(), method_state=self.method.state_dict()
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.method.load_state_dict(checkpoint.get("avbalance", {}).get("method_state", {}))


class LightningStep:
    """:class:`avbalance.methods.base.StepContext` on Lightning's manual optimisation: backward
    through ``manual_backward`` (AMP scaling), the step through :meth:`BalancedModule.manual_step`."""

    def __init__(self, module: BalancedModule, batch_idx: int):
        self.module = module
        self.optimizer = module.optimizers()
        self.epoch = module.current_epoch
        self.batch_idx = batch_idx
        self.num_batches = int(module.trainer.num_training_batches)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.module.manual_backward(loss, retain_graph=retain_graph)

    def step(self, before_step: Callable[[], None] | None = None) -> None:
        self.module.manual_step(before_step)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
