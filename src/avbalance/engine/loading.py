"""A trained run rebuilt from one of its checkpoints: the model and the data module of the config it
was trained with. ``avbalance test`` (:func:`avbalance.engine.run.evaluate`) and the analyses
(probe, report, Shapley values) all load runs here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..models import build_model
from ..models.checkpoint import load_state, model_state, read_checkpoint
from ..models.model import MultimodalModel
from .config import RunConfig
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
    path = resolve_checkpoint(checkpoint)
    saved = read_checkpoint(path)
    state = saved.get("avbalance", {})
    if "config" not in state or "model_spec" not in state:
        raise ConfigError(f"{path}: no training config inside; give a checkpoint written by 'avbalance train'")
    config = RunConfig.model_validate(state["config"])
    if data_root is not None:
        config.data.root = data_root
    if batch_size is not None:
        config.data.eval_batch_size = batch_size
    model = build_model(state["model_spec"])
    load_state(model, model_state(saved), path)
    datamodule = BalancedDataModule(config.data, seed=config.trainer.seed)
    return LoadedRun(model.eval(), state["model_spec"], datamodule, config, path)
