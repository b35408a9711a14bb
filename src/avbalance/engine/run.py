"""Training and evaluation entry points: build everything from a :class:`RunConfig` and run it."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import ConfigError
from ..methods import get_method
from ..models import FUSIONS, model_spec
from ..models.checkpoint import atomic_torch_save, load_state, model_state, read_checkpoint
from ..models.pretrained import load_pretrained_encoder
from lightning.fabric.utilities.exceptions import MisconfigurationException
from .config import RunConfig, save_config
from .datamodule import BalancedDataModule
from .module import BalancedModule

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
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*number of training batches.*",
                    ".*Checkpoint directory .* exists and is not empty.*",
                    ".*Experiment logs directory.*"):
        warnings.filterwarnings("ignore", message=pattern)


def check_config(config: RunConfig) -> None:
    """Validate names that the typed config cannot (method, hyperparameters, fusion) before any work."""
    get_method(config.method.name, **config.method.params)
    if config.model.fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {config.model.fusion!r}; choose one of: {', '.join(FUSIONS)}")


def build_model_spec(config: RunConfig, datamodule: BalancedDataModule) -> dict[str, Any]:
    info = datamodule.info
    advice = info.recommended_encoder
    spec = model_spec(
        info.input_shapes,
        info.num_classes,
        fusion=config.model.fusion,
        fusion_options=config.model.fusion_options,
        width=config.model.width or advice.get("width", 64),
        layers=config.model.layers or advice.get("layers", [2, 2, 2, 2]),
        encoders=config.model.encoders,
    )
    method = get_method(config.method.name, **config.method.params)
    try:
        method.check_modalities(info.modalities)
        spec = method.adapt_model_spec(spec)
        BalancedModule(config.model_dump(), spec)  # builds the model: fails early on a bad combination
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return spec


def load_pretrained(module: BalancedModule, config: RunConfig) -> None:
    for modality, path in config.model.pretrained.items():
        if modality not in module.model.encoders:
            raise ConfigError(f"model.pretrained: no {modality!r} encoder in this model "
                              f"(modalities: {', '.join(module.model.modalities)})")
        for note in load_pretrained_encoder(module.model.encoders[modality], path, modality):
            logging.getLogger("avbalance").warning(note)


def build_trainer(config: RunConfig, out: Path, callbacks: list, loggers: list | bool = True) -> L.Trainer:
    trainer = config.trainer
    method = get_method(config.method.name, **config.method.params)
    if method.overrides_step and trainer.accumulate_grad_batches > 1:
        raise ConfigError(f"method {method.name!r} runs its own training step and does not support "
                          f"trainer.accumulate_grad_batches > 1")
    try:
        return _lightning_trainer(config, out, callbacks, loggers, method)
    except (MisconfigurationException, ValueError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"trainer settings: {first_line}") from None


def _lightning_trainer(config: RunConfig, out: Path, callbacks: list, loggers, method) -> L.Trainer:
    trainer = config.trainer
    return L.Trainer(
        max_epochs=trainer.epochs,
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        num_nodes=trainer.num_nodes,
        strategy=trainer.strategy,
        precision=trainer.precision,
        deterministic=trainer.deterministic,
        accumulate_grad_batches=trainer.accumulate_grad_batches,
        # with manual optimisation the module clips (Lightning refuses to)
        gradient_clip_val=None if method.overrides_step else trainer.gradient_clip_val,
        reload_dataloaders_every_n_epochs=1 if method.resamples_data else 0,
        use_distributed_sampler=False,  # the data module shards: evaluation sees every sample once
        sync_batchnorm=trainer.sync_batchnorm,
        log_every_n_steps=trainer.log_every_n_steps,
        enable_progress_bar=trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(out),
    )


def latest_checkpoint(out: Path, **every) -> ModelCheckpoint:
    """A callback that keeps ``checkpoints/last.ckpt`` current (``ModelCheckpoint(save_last=True)``
    refreshes it only when the monitored metric improves; resume needs the newest state)."""
    return ModelCheckpoint(dirpath=out / CHECKPOINT_DIR, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False, **every)


def _strip(results: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) + 1:]: float(v) for k, v in results.items() if k.startswith(prefix + "/")}


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


def train(config: RunConfig, resume: str | None = None) -> dict[str, Any]:
    """Train, select the best epoch on validation, evaluate it on test. Returns ``metrics.json``'s
    content: ``{"val": {...}, "test": {...}, "best_epoch": int, "best_checkpoint": str}``.

    ``resume``: a checkpoint to continue from, or ``"auto"`` for the run's last checkpoint."""
    quiet_lightning()
    check_config(config)
    resume = resolve_resume(resume, Path(config.out))
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    out = Path(config.out)
    datamodule = BalancedDataModule(config.data, seed=config.trainer.seed)
    spec = build_model_spec(config, datamodule)
    module = BalancedModule(config.model_dump(), spec)
    if resume is None:
        load_pretrained(module, config)
    checkpoint = ModelCheckpoint(dirpath=out / CHECKPOINT_DIR, filename="best", monitor="val/acc", mode="max",
                                 save_top_k=1, enable_version_counter=False)
    callbacks = [checkpoint, latest_checkpoint(out, every_n_epochs=1)]
    if config.trainer.checkpoint_every_n_steps:
        callbacks.append(latest_checkpoint(out, every_n_train_steps=config.trainer.checkpoint_every_n_steps))
    loggers = [TensorBoardLogger(str(out), name="", version=""), CSVLogger(str(out), name="", version="")]
    trainer = build_trainer(config, out, callbacks, loggers)  # bad trainer settings fail here, before any output
    out.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        save_config(config, out / "config.yaml")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    skipped_steps = module.skipped_steps  # read before evaluation reloads the best checkpoint

    best = checkpoint.best_model_path or str(out / CHECKPOINT_DIR / "last.ckpt")
    history = list(module.history)
    val = _strip(trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0], "val")
    test = _strip(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0], "test")
    best_epoch = max(history, key=lambda r: r.get("val/acc", float("-inf")))["epoch"] if history else None
    metrics = {"val": val, "test": test, "best_epoch": best_epoch, "best_checkpoint": best,
               "skipped_steps": skipped_steps}
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "history.json").write_text(json.dumps(history, indent=2))
    return metrics


def evaluate(checkpoint_path: str, split: str = "test", data_root: str | None = None,
             overrides: dict[str, Any] | None = None, accelerator: str = "auto", devices: int | str = "auto",
             batch_size: int | None = None) -> dict[str, float]:
    """Evaluate a checkpoint on a split of the dataset it was trained on (or of ``data_root``)."""
    quiet_lightning()
    checkpoint = read_checkpoint(checkpoint_path)
    state = checkpoint.get("avbalance", {})
    if "config" not in state:
        raise ConfigError(f"{checkpoint_path}: no training config inside; 'avbalance test' needs a checkpoint "
                          f"written by 'avbalance train'")
    config = RunConfig.model_validate(state["config"])
    if data_root is not None:
        config.data.root = data_root
    if batch_size is not None:
        config.data.batch_size = batch_size
    for key, value in (overrides or {}).items():
        setattr(config.data, key, value)
    config.trainer.accelerator, config.trainer.devices = accelerator, devices
    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r}; choose val or test")
    datamodule = BalancedDataModule(config.data, seed=config.trainer.seed)
    module = BalancedModule(config.model_dump(), state["model_spec"])
    load_state(module.model, model_state(checkpoint), checkpoint_path)
    trainer = build_trainer(config, Path(checkpoint_path).parent, callbacks=[], loggers=False)
    run = trainer.validate if split == "val" else trainer.test
    results = run(module, datamodule=datamodule, verbose=False)[0]
    return _strip(results, split)
