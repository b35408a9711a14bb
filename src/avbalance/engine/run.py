"""Training and evaluation entry points: build everything from a :class:`RunConfig` and run it."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import CheckpointError, ConfigError
from ..methods import get_method
from ..methods.base import Method
from ..metrics import metric_names
from ..models import HEADS, build_model, model_spec
from ..models.checkpoint import atomic_torch_save, load_state, model_state, read_checkpoint
from ..models.external import EncoderError, check_encoder_options, modality_of
from ..models.model import MultimodalModel
from ..models.pretrained import freeze_encoder, load_pretrained_encoder
from ..outputs import check_output_folder, write_text_atomic
from ..signals import Stopped, StopSignals
from .callbacks import (
    EpochHistory,
    GeneratorStates,
    NonFiniteGuard,
    RunFolderGuard,
    StopOnSignal,
    TrainingInterrupted,
)
from .config import RunConfig, config_text
from .cpu_memory import keep_freed_cpu_memory
from .datamodule import BalancedDataModule, TrainEntries
from .loading import LoadedRun, load_run
from .module import BalancedModule, EvaluatedModel

CHECKPOINT_DIR = "checkpoints"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a killed run never leaves a
    half-written checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)


def quiet_lightning() -> None:
    """Keep the console to what users need: no device banners or data-loader hints."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*number of training batches.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*Experiment logs directory.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


# -- building a run ----------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """What one training run is built from, each built once."""

    method: Method
    datamodule: BalancedDataModule
    module: BalancedModule


def build_method(config: RunConfig) -> Method:
    """The method with validated hyperparameters, knowing the run seed; checked against the settings
    it cannot work with."""
    method = get_method(config.method.name, **config.method.params)
    method.set_run_seed(config.trainer.seed)
    if method.overrides_step and config.trainer.accumulate_grad_batches > 1:
        raise ConfigError(
            f"method {method.name!r} runs its own training step and does not support "
            f"trainer.accumulate_grad_batches > 1"
        )
    return method


def epoch_entries(method: Method) -> Callable[[int], TrainEntries | None] | None:
    """For a resampling method, each epoch's training samples: the whole set in the first epoch,
    then the method's choice after each epoch (``train_entries``)."""
    if not method.resamples_data:
        return None
    return lambda epoch: method.train_entries() if epoch > 0 else None


def build_model_spec(config: RunConfig, datamodule: BalancedDataModule, method: Method) -> dict[str, Any]:
    info, advice = datamodule.info, datamodule.info.recommended_encoder
    spec = model_spec(
        info.input_shapes,
        info.num_classes,
        fusion=config.model.fusion,
        fusion_options=config.model.fusion_options,
        width=config.model.width or advice.get("width", 64),
        layers=config.model.layers or advice.get("layers", [2, 2, 2, 2]),
        encoders=config.model.encoders,
        input_kinds=info.input_kinds,
        variable_length=info.variable_length,
        vocab_sizes=info.vocab_sizes,
    )
    try:
        method.check_modalities(info.modalities)
        return method.adapt_model_spec(spec)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_run(config: RunConfig) -> TrainingRun:
    """Method, data module and LightningModule of ``config``; every user mistake (method,
    hyperparameters, fusion, data, model) is a ConfigError here, before any output is written."""
    method = build_method(config)
    HEADS.get(config.model.fusion)  # an unknown fusion: a one-line error naming the heads, before loading data
    datamodule = BalancedDataModule(
        config.data, config.trainer.seed, epoch_entries(method), deterministic=config.trainer.deterministic
    )
    spec = build_model_spec(config, datamodule, method)
    check_encoder_options(config.model.encoders, spec)
    # The initial weights depend on the run seed alone, whatever was drawn before.
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = build_checked_model(spec)
    freeze_encoders(model, config)
    check_monitor(config.trainer.monitor, model.modalities)
    return TrainingRun(method, datamodule, BalancedModule(model, method, config, spec))


def check_monitor(monitor: str, modalities: list[str]) -> None:
    """``trainer.monitor`` names a validation metric that a model of ``modalities`` logs."""
    known = [f"val/{name}" for name in metric_names(modalities)]
    if monitor not in known:
        raise ConfigError(f"trainer.monitor: unknown metric {monitor!r}; choose one of: {', '.join(known)}")


def build_checked_model(spec: dict[str, Any]) -> MultimodalModel:
    """The model of ``spec``; an encoder's refusal names its config key (``model.encoders.<m>...``)."""
    try:
        return build_model(spec)
    except EncoderError as error:
        modality = modality_of(error, spec)
        raise (error.at(modality) if modality else error) from None
    except ValueError as error:
        raise ConfigError(str(error)) from None


def freeze_encoders(model: MultimodalModel, config: RunConfig) -> None:
    """``model.encoders.<m>.freeze``; every modality given settings (``model.pretrained`` included)
    must be one of the model's."""
    for modality, settings in config.model.encoder_settings().items():
        if modality not in model.encoders:
            raise ConfigError(
                f"model.pretrained: no {modality!r} encoder in this model (modalities: {', '.join(model.modalities)})"
            )
        if settings.freeze:
            freeze_encoder(model.encoders[modality])


def load_pretrained(module: BalancedModule, config: RunConfig) -> None:
    """``model.encoders.<m>.weights`` (alias ``model.pretrained.<m>``) into the fresh model."""
    for modality, settings in config.model.encoder_settings().items():
        if settings.weights is None:
            continue
        for note in load_pretrained_encoder(module.model.encoders[modality], settings.weights, modality):
            logging.getLogger("avbalance").warning(note)


# -- trainers and callbacks --------------------------------------------------------------------------


def lightning_trainer(config: RunConfig, out: Path, **settings: Any) -> L.Trainer:
    """A Lightning trainer on the config's hardware settings; Lightning's refusals become one-line
    ConfigErrors (before any output is written)."""
    trainer = config.trainer
    try:
        return L.Trainer(
            accelerator=trainer.accelerator,
            devices=trainer.devices,
            num_nodes=trainer.num_nodes,
            strategy=trainer.strategy,
            precision=trainer.precision,
            deterministic=trainer.deterministic,
            use_distributed_sampler=False,  # the data module shards: evaluation sees every sample once
            enable_progress_bar=trainer.progress_bar,
            enable_model_summary=False,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(out),
            **settings,
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError) as error:  # tpu: no torch_xla
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"trainer settings: {first_line}") from None


def build_trainer(config: RunConfig, method: Method, out: Path, callbacks: list, loggers: list) -> L.Trainer:
    trainer = config.trainer
    if trainer.keep_cpu_memory:  # before the first step: every step then reuses the first steps' memory
        keep_freed_cpu_memory()
    return lightning_trainer(
        config,
        out,
        max_epochs=trainer.epochs,
        accumulate_grad_batches=trainer.accumulate_grad_batches,
        # with manual optimisation the module clips (Lightning refuses to)
        gradient_clip_val=None if method.overrides_step else trainer.gradient_clip_val,
        reload_dataloaders_every_n_epochs=1 if method.resamples_data else 0,
        sync_batchnorm=trainer.sync_batchnorm,
        log_every_n_steps=trainer.log_every_n_steps,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=loggers,
    )


def best_checkpoint(out: Path, monitor: str = "val/acc", mode: str = "max") -> ModelCheckpoint:
    """``checkpoints/best.ckpt``: the best epoch by ``monitor`` (``trainer.monitor``), saved when
    validation ends: before the epoch's end hooks, which may change the model (ReLearning
    re-initialises encoders), so it holds the validated weights."""
    return ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )


def latest_checkpoint(out: Path, **every) -> ModelCheckpoint:
    """A callback that keeps ``checkpoints/last.ckpt`` current, saved after the epoch's end hooks (or
    every N steps): the state a resumed run continues from. (``ModelCheckpoint(save_last=True)``
    refreshes it only when the monitored metric improves.)"""
    return ModelCheckpoint(
        dirpath=out / CHECKPOINT_DIR,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
        **every,
    )


def early_stopping(config: RunConfig) -> list[EarlyStopping]:
    """Lightning's early stopping on the selection metric, when ``trainer.early_stopping_patience`` is set."""
    trainer = config.trainer
    if trainer.early_stopping_patience is None:
        return []
    stopping = EarlyStopping(
        monitor=trainer.monitor,
        mode=trainer.monitor_mode,
        patience=trainer.early_stopping_patience,
        check_on_train_epoch_end=False,  # decided when validation ends, like the best checkpoint
    )
    return [stopping]


def wandb_logger(out: Path) -> Logger:
    """A Weights & Biases logger, offline unless ``WANDB_MODE`` says otherwise; the project is the run
    folder's parent, the run name the folder's name."""
    try:
        import wandb  # noqa: F401  (the optional extra)
    except ImportError:
        raise ConfigError(
            "trainer.loggers: wandb is not installed; install the extra: pip install 'avbalance[wandb]'"
        ) from None
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_MODE", "offline")
    project = out.resolve().parent.name or "avbalance"
    return WandbLogger(name=out.name, project=project, save_dir=str(out))


def build_loggers(config: RunConfig, out: Path) -> list[Logger]:
    """``trainer.loggers``: TensorBoard event files, ``metrics.csv`` and / or Weights & Biases."""
    builders = {
        "tensorboard": lambda: TensorBoardLogger(str(out), name="", version=""),
        "csv": lambda: CSVLogger(str(out), name="", version=""),
        "wandb": lambda: wandb_logger(out),
    }
    return [builders[name]() for name in dict.fromkeys(config.trainer.loggers)]


def best_record_epoch(records: list[dict[str, Any]], monitor: str, mode: str) -> int | None:
    """The epoch of the best ``monitor`` value in the history (the first of equals, as the checkpoint)."""
    scored = [r for r in records if monitor in r]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r[monitor])["epoch"]


def resolve_resume(resume: str | None, out: Path) -> str | None:
    """``auto``: the run's ``checkpoints/last.ckpt`` when it exists (a fresh start otherwise)."""
    if resume is None:
        return None
    if resume == "auto":
        last = out / CHECKPOINT_DIR / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise ConfigError(f"{resume}: no such checkpoint to resume from")
    return resume


def spec_difference(here: Any, there: Any, key: str = "") -> str | None:
    """The first setting in which two model specs differ, as ``KEY is X here, Y in the checkpoint``."""
    if isinstance(here, dict) and isinstance(there, dict):
        for name in {**here, **there}:
            difference = spec_difference(here.get(name), there.get(name), f"{key}.{name}" if key else name)
            if difference:
                return difference
        return None
    if here != there and not (isinstance(here, (list, tuple)) and list(here) == list(there or [])):
        return f"{key} is {here!r} here, {there!r} in the checkpoint"
    return None


def check_resume(path: str, module: BalancedModule) -> None:
    """The checkpoint to resume from holds this run's model and method (one line naming the first
    setting that differs); it is loaded into the model here, so a mismatch fails before any output."""
    saved = read_checkpoint(path)
    state = saved.get("avbalance", {})
    if "model_spec" not in state or "state_dict" not in saved:
        raise CheckpointError(f"{path}: not a checkpoint written by 'avbalance train'; cannot resume from it")
    difference = spec_difference(module.model_spec, state["model_spec"], "model")
    if difference is None:
        method = state.get("config", {}).get("method", {}).get("name", module.config.method.name)
        difference = spec_difference(module.config.method.name, method, "method")
    if difference is None:  # the optimizer's parameter groups must be those of the checkpoint
        saved_encoders = state.get("config", {}).get("model", {}).get("encoders", {})
        here, there = optimizer_layout(module.config.model.encoders), optimizer_layout(saved_encoders)
        difference = spec_difference(here, there, "model.encoders")
    if difference:
        raise CheckpointError(f"{path}: does not match this run: {difference}")
    load_state(module.model, model_state(saved), path)


#: ``model.encoders.<m>`` settings that shape the optimizer's parameter groups, with their defaults.
OPTIMIZER_SETTINGS = {"freeze": False, "lr_scale": 1.0}


def optimizer_layout(encoders: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every modality's ``freeze`` and ``lr_scale`` settings that differ from the defaults."""
    layout = {}
    for modality, settings in encoders.items():
        changed = {k: settings[k] for k, default in OPTIMIZER_SETTINGS.items() if settings.get(k, default) != default}
        if changed:
            layout[modality] = changed
    return layout


def check_split(split: str) -> None:
    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r}; choose val or test")


def _strip(results: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) + 1 :]: float(v) for k, v in results.items() if k.startswith(prefix + "/")}


# -- entry points ------------------------------------------------------------------------------------


def train(config: RunConfig, resume: str | None = None) -> dict[str, Any]:
    """Train, select the best epoch on validation, evaluate it on test. Returns ``metrics.json``'s
    content: ``{"val": {...}, "test": {...}, "best_epoch": int, "best_checkpoint": str, "skipped_steps": int}``.

    ``resume``: a checkpoint to continue from, or ``"auto"`` for the run's last checkpoint.
    Everything is checked before the run folder is touched; until the first checkpoint, a failure
    leaves it as it was. SIGTERM / SIGINT save ``last.ckpt`` and raise :class:`~avbalance.signals.Stopped`."""
    quiet_lightning()
    out = check_output_folder(config.out)
    resume = resolve_resume(resume, out)
    run = build_run(config)
    if resume is None:
        load_pretrained(run.module, config)
    else:
        check_resume(resume, run.module)
    guard = NonFiniteGuard(config.trainer.nonfinite, config.trainer.precision)
    history, best = EpochHistory(guard), best_checkpoint(out, config.trainer.monitor, config.trainer.monitor_mode)
    stopper, folder = StopOnSignal(out / CHECKPOINT_DIR / "last.ckpt"), RunFolderGuard(out, config_text(config))
    callbacks = [guard, history, GeneratorStates(), stopper, folder, best, latest_checkpoint(out, every_n_epochs=1)]
    if config.trainer.checkpoint_every_n_steps:
        callbacks.append(latest_checkpoint(out, every_n_train_steps=config.trainer.checkpoint_every_n_steps))
    callbacks += early_stopping(config)
    loggers = build_loggers(config, out)
    trainer = build_trainer(config, run.method, out, callbacks, loggers)  # bad settings fail before any output
    guarded_fit(trainer, run, resume, stopper, folder)
    records, skipped_steps = list(history.records), guard.skipped_steps  # before evaluation reloads states

    best_path = best.best_model_path or str(out / CHECKPOINT_DIR / "last.ckpt")
    val, test = final_evaluation(trainer, run, best_path)
    best_epoch = best_record_epoch(records, config.trainer.monitor, config.trainer.monitor_mode)
    metrics = {
        "val": val,
        "test": test,
        "best_epoch": best_epoch,
        "best_checkpoint": best_path,
        "skipped_steps": skipped_steps,
    }
    if trainer.is_global_zero:
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
        write_text_atomic(out / "history.json", json.dumps(records, indent=2))
    return metrics


def guarded_fit(
    trainer: L.Trainer, run: TrainingRun, resume: str | None, stopper: StopOnSignal, folder: RunFolderGuard
) -> None:
    """Fit with SIGTERM / SIGINT caught: they end in :class:`Stopped` once ``last.ckpt`` is saved.
    A failure before the first checkpoint leaves the run folder as it was."""
    try:
        with stopper.stop:
            trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=resume)
    except TrainingInterrupted as interrupted:
        raise Stopped(interrupted.signum, str(interrupted)) from None
    except BaseException as error:
        if trainer.is_global_zero:
            folder.restore()
        if stopper.stop.received and isinstance(error, (KeyboardInterrupt, SystemExit)):  # a second signal
            message = "stopped at once by a second signal; resume with --resume auto"
            raise Stopped(stopper.stop.received, message) from None
        raise
    if stopper.stop.received:  # after the last training step: the epoch's checkpoints are complete
        raise Stopped(
            stopper.stop.received,
            f"interrupted after training, at epoch {trainer.current_epoch}; resume with --resume auto to evaluate",
        )


def final_evaluation(trainer: L.Trainer, run: TrainingRun, best_path: str) -> tuple[dict, dict]:
    """Validation and test metrics of the best checkpoint. SIGTERM / SIGINT end them in :class:`Stopped`
    (Lightning would turn them into a bare exit): the checkpoints are complete, a resume evaluates."""
    with StopSignals() as stop:
        try:
            val = trainer.validate(run.module, datamodule=run.datamodule, ckpt_path=best_path, verbose=False)[0]
            test = trainer.test(run.module, datamodule=run.datamodule, ckpt_path=best_path, verbose=False)[0]
        except (KeyboardInterrupt, SystemExit):
            if stop.received is None:
                raise
            message = "interrupted during the final evaluation; rerun with --resume auto to evaluate"
            raise Stopped(stop.received, message) from None
    return _strip(val, "val"), _strip(test, "test")


def evaluate_run(
    run: LoadedRun, split: str = "test", accelerator: str = "auto", devices: int | str = "auto"
) -> dict[str, float]:
    """The metrics of a loaded run's model on its ``val`` or ``test`` split (sharded under DDP)."""
    check_split(split)
    quiet_lightning()
    config = run.config.model_copy(deep=True)
    config.trainer.accelerator, config.trainer.devices = accelerator, devices
    trainer = lightning_trainer(config, run.checkpoint.parent, callbacks=[], logger=False)
    module = EvaluatedModel(run.model, run.model_spec["num_classes"])
    evaluation = trainer.validate if split == "val" else trainer.test
    return _strip(evaluation(module, datamodule=run.datamodule, verbose=False)[0], split)


def evaluate(
    checkpoint_path: str,
    split: str = "test",
    data_root: str | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    batch_size: int | None = None,
) -> dict[str, float]:
    """Evaluate a checkpoint (or a run folder's best) on a split of the dataset it was trained on
    (or of ``data_root``)."""
    check_split(split)  # before the costly loading
    return evaluate_run(load_run(checkpoint_path, data_root, batch_size), split, accelerator, devices)
