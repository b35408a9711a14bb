"""A trained run rebuilt from one of its checkpoints: the model and the data module of the config it
was trained with. ``avbalance test`` (:func:`avbalance.engine.run.evaluate`) and the analyses
(probe, report, Shapley values) all load runs here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.base import DatasetInfo
from ..data.registry import prepared_datasets
from ..errors import CheckpointError, ConfigError, DataError
from ..models import build_model
from ..models.build import input_channels
from ..models.checkpoint import load_state, model_state, read_checkpoint
from ..models.model import MultimodalModel
from .config import RunConfig, validate
from .datamodule import BalancedDataModule


@dataclass
class LoadedRun:
    """A trained model (eval mode) with the data module of the config it was trained with."""

    model: MultimodalModel
    model_spec: dict[str, Any]
    datamodule: BalancedDataModule
    config: RunConfig
    checkpoint: Path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/best.ckpt``, else ``last.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(
            f"{path}: no checkpoints/best.ckpt in this folder; give a run folder written by "
            f"'avbalance train --out' or a checkpoint file"
        )
    return path


def run_folder_of(checkpoint: Path) -> Path:
    """``RUN`` for ``RUN/checkpoints/best.ckpt``; the checkpoint's folder otherwise."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_run(checkpoint: str | Path, data_root: str | None = None, batch_size: int | None = None) -> LoadedRun:
    """Rebuild a training run's model and data module from one of its checkpoints (or run folders).

    ``data_root``: the prepared data, if it moved since training; ``batch_size``: the evaluation
    batch size. The validation split is carved from train with the seed saved in the config, so it
    is the very split the run was selected on.
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    path = resolve_checkpoint(checkpoint)
    saved = read_checkpoint(path)
    state = saved.get("avbalance", {})
    if "config" not in state or "model_spec" not in state:
        raise ConfigError(f"{path}: no training config inside; give a checkpoint written by 'avbalance train'")
    config = validate(state["config"], f"{path}: its training config")
    if data_root is not None:
        if config.data.dataset not in prepared_datasets():
            raise ConfigError(
                f"{data_root}: --data applies to runs trained on a prepared cache; "
                f"this run was trained on {config.data.dataset!r}"
            )
        config.data.root = data_root
    if batch_size is not None:
        config.data.eval_batch_size = batch_size
    datamodule = BalancedDataModule(config.data, seed=config.trainer.seed)
    check_data_fits(datamodule.info, state["model_spec"], config.data.root or config.data.dataset)
    model = build_model(state["model_spec"])
    load_state(model, model_state(saved), path)
    return LoadedRun(model.eval(), state["model_spec"], datamodule, config, path)


def _names(names) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_data_fits(info: DatasetInfo, spec: dict[str, Any], data: str) -> None:
    """The data a checkpoint is evaluated on has its model's classes and modalities (and channels)."""
    if info.num_classes != spec["num_classes"]:
        classes = f" ({_names(info.class_names)})" if info.class_names else ""
        raise DataError(
            f"{data}: {info.num_classes} classes{classes}, but the checkpoint's model has {spec['num_classes']}"
        )
    if set(info.modalities) != set(spec["encoders"]):
        raise DataError(
            f"{data}: modalities {_names(info.modalities)}, but the checkpoint's model uses {_names(spec['encoders'])}"
        )
    for modality, shape in info.input_shapes.items():
        encoder = spec["encoders"][modality]
        expected = encoder.get("in_channels")
        kind, vocab_size = info.input_kinds.get(modality), info.vocab_sizes.get(modality)
        channels = input_channels(shape, encoder["kind"], kind, vocab_size)
        if expected is not None and channels != expected:
            raise DataError(
                f"{data}: {modality} has {channels} channels, the checkpoint's {modality} encoder takes {expected}"
            )
