"""The LightningModule: a multimodal model trained with a balancing method through its hooks."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch

from ..errors import AvbalanceError
from ..methods import get_method
from ..methods.distributed import average_gradients, broadcast_buffers
from .epoch_data import LoaderEpochData
from .resume import capture_rng, restore_rng
from ..metrics import MultimodalMetrics
from ..models import build_model
from .config import RunConfig


def build_optimizer(config: RunConfig, parameters) -> torch.optim.Optimizer:
    optim = config.optim
    if optim.name == "sgd":
        return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.name == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer):
    optim = config.optim
    if optim.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size, gamma=optim.gamma)
    if optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.trainer.epochs)
    return None


class TrainingError(AvbalanceError):
    """Training cannot go on (e.g. non-finite gradients with ``trainer.nonfinite=stop``)."""


class BalancedModule(L.LightningModule):
    """Built from a plain config dict and a model spec (both stored in every checkpoint)."""

    def __init__(self, config: dict[str, Any], model_spec: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters()
        self.config = RunConfig.model_validate(config)
        self.model_spec = model_spec
        self.method = get_method(self.config.method.name, **self.config.method.params)
        self.model = build_model(model_spec)
        self.method.check_modalities(self.model.modalities)
        classes, modalities = model_spec["num_classes"], self.model.modalities
        self.train_metrics = MultimodalMetrics(classes, modalities, full=False)
        self.val_metrics = MultimodalMetrics(classes, modalities)
        self.test_metrics = MultimodalMetrics(classes, modalities)
        self.history: list[dict[str, float]] = []
        self._step_output = None
        self._before_step = None
        self.skipped_steps = 0  # steps skipped by the non-finite guard
        # Methods that run the whole step themselves get manual optimisation (see LightningStep).
        self.automatic_optimization = not self.method.overrides_step
        self._loss_sum, self._loss_count = torch.zeros(()), 0

    # -- training ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.config, self.model.parameters())
        scheduler = build_scheduler(self.config, optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def epoch_data(self) -> LoaderEpochData | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return None
        data = self.config.data
        return LoaderEpochData(datamodule.train_set, datamodule.val_set, data.eval_batch_size or data.batch_size,
                               self.device, data.num_workers, self.config.trainer.seed)

    def on_fit_start(self) -> None:
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        with warnings.catch_warnings():
            if not self.trainer.is_global_zero:  # warn once, not once per rank
                warnings.simplefilter("ignore")
            self.method.setup(self.model, optimizer, data=self.epoch_data())

    def on_train_epoch_start(self) -> None:
        self.method.on_epoch_start(self.current_epoch, self.model, self.epoch_data())
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # A method running its own step may back-propagate several times per batch, which DDP's
        # reducer does not allow: its gradients are averaged in LightningStep.step instead.
        wrapper = self.trainer.strategy.model
        if not self.automatic_optimization and hasattr(wrapper, "require_backward_grad_sync"):
            wrapper.require_backward_grad_sync = False

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.automatic_optimization:  # DDP did not broadcast buffers for these steps
            broadcast_buffers(self.model)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self.automatic_optimization:
            loss = self.method.training_step(self.model, batch, LightningStep(self, batch_idx))
            self._loss_sum = self._loss_sum + loss.detach()
            self._loss_count += 1
            self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=len(batch["label"]))
            self._log_method()
            return loss
        output = self.model(batch)
        loss = self.method.loss(output, batch)
        self._step_output = (output, batch)
        self._loss_sum = self._loss_sum + loss.detach()
        self._loss_count += 1
        self.train_metrics.update(output.logits.detach(), {m: z.detach() for m, z in output.unimodal_logits.items()},
                                  batch["label"])
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["label"]))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after backward, DDP's gradient averaging and AMP unscaling, before
        # gradient clipping and the optimizer step: where gradient modulation belongs.
        if not self._gradients_usable():
            self._step_output, self._before_step = None, None
            return
        if self.automatic_optimization:
            output, batch = self._step_output
            self.method.after_backward(self.model, output, batch)
            self._step_output = None
            self._log_method()
            return
        if self._before_step is not None:
            self._before_step()
            self._before_step = None
        if self.config.trainer.gradient_clip_val:  # Lightning clips only in automatic optimisation
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.trainer.gradient_clip_val)

    def _gradients_usable(self) -> bool:
        """The non-finite guard: with NaN/Inf gradients the step is skipped (every gradient set to
        None, so neither momentum nor weight decay moves a parameter) and counted, or training stops
        (``trainer.nonfinite``). One host synchronisation per step; ``off`` removes it."""
        mode = self.config.trainer.nonfinite
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if mode == "off" or not grads:
            return True
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return True
        if mode == "stop" and "16" not in str(self.config.trainer.precision):  # fp16 overflows are routine
            raise TrainingError(f"non-finite gradients at epoch {self.current_epoch}, step {self.global_step}; "
                                f"lower the learning rate, or set trainer.nonfinite=skip to skip such steps")
        for parameter in self.model.parameters():
            parameter.grad = None
        self.method.discard_step()
        self.skipped_steps += 1
        return False

    def _log_method(self) -> None:
        logs = self.method.logs()
        if logs:
            self.log_dict({f"method/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self.method.on_epoch_end(self.current_epoch, self.model, self.epoch_data())
        if not self.automatic_optimization:  # Lightning steps schedulers only in automatic mode
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.method.resamples_data and datamodule is not None:
            datamodule.train_entries = self.method.train_entries()

    def _train_record(self) -> dict[str, float]:
        # Lightning validates before on_train_epoch_end, so the epoch's training figures are read here.
        # Methods running their own step produce no outputs here: only their loss is recorded.
        record = {}
        if self.automatic_optimization:
            record = {f"train/{k}": v for k, v in self.train_metrics.compute().items() if k != "samples"}
            self.train_metrics.reset()
        record["train/loss"] = float(self._loss_sum) / max(self._loss_count, 1)
        return record

    # -- evaluation --------------------------------------------------------------------------------
    def _evaluate(self, metrics: MultimodalMetrics, batch: dict[str, torch.Tensor]) -> None:
        output = self.model(batch)
        metrics.update(output.logits, output.unimodal_logits, batch["label"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(self.val_metrics, batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(self.test_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict({f"val/{k}": v for k, v in results.items()}, sync_dist=False)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            record = {"epoch": self.current_epoch, **self._train_record(), "train/skipped_steps": self.skipped_steps}
            record.update({f"val/{k}": v for k, v in results.items()})
            self.history.append(record)

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()
        self.test_metrics.reset()
        self.log_dict({f"test/{k}": v for k, v in results.items()}, sync_dist=False)

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["avbalance"] = {
            "model_spec": self.model_spec,
            "config": self.config.model_dump(),
            "method_state": self.method.state_dict(),
            "history": list(self.history),
            "rng": capture_rng(),
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("avbalance", {})
        self.method.load_state_dict(state.get("method_state", {}))
        self.history = list(state.get("history", []))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.method.resamples_data and datamodule is not None:  # the resumed epoch's training set
            datamodule.train_entries = self.method.train_entries()
        if "rng" in state and self.trainer.state.fn == "fit":
            restore_rng(state["rng"])


class LightningStep:
    """:class:`avbalance.methods.base.StepContext` on Lightning's manual optimisation: backward
    through ``manual_backward`` (AMP scaling, DDP averaging), the step through Lightning's optimizer
    wrapper (AMP unscaling, then ``before_step`` in ``on_before_optimizer_step``)."""

    def __init__(self, module: BalancedModule, batch_idx: int):
        self.module = module
        self.optimizer = module.optimizers()
        self.epoch = module.current_epoch
        self.batch_idx = batch_idx
        self.num_batches = int(module.trainer.num_training_batches)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.module.manual_backward(loss, retain_graph=retain_graph)

    def step(self, before_step=None) -> None:
        average_gradients(self.module.model.parameters())  # no-op in one process
        self.module._before_step = before_step
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
