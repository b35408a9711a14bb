"""Loading what the analyses need: a trained model and its data (rebuilt from the checkpoint's
saved config), and the files of a run folder."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from ..engine.config import RunConfig
from ..engine.datamodule import BalancedDataModule
from ..errors import CheckpointError, ConfigError, DataError
from ..models import build_model
from ..models.checkpoint import load_state, model_state, read_checkpoint
from ..models.model import MultimodalModel

SPLITS = ("train", "val", "test")


@dataclass
class LoadedRun:
    """A trained model (eval mode) with the data module of the config it was trained with."""

    model: MultimodalModel
    datamodule: BalancedDataModule
    config: RunConfig
    checkpoint: Path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/best.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(f"{path}: no checkpoints/best.ckpt in this folder; give a run folder written by "
                              f"'avbalance train --out' or a checkpoint file")
    return path


def run_folder_of(checkpoint: Path) -> Path:
    """``RUN`` for ``RUN/checkpoints/best.ckpt``; the checkpoint's folder otherwise."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def pick_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_run(checkpoint: str | Path, data_root: str | None = None, batch_size: int | None = None) -> LoadedRun:
    """Rebuild a training run's model and data module from one of its checkpoints.

    The validation split is carved from train with the seed saved in the config, so it is the
    very split the run was selected on.
    """
    path = resolve_checkpoint(checkpoint)
    saved = read_checkpoint(path)
    state = saved.get("avbalance", {})
    if "config" not in state or "model_spec" not in state:
        raise ConfigError(f"{path}: no training config inside; analyses need a checkpoint written by "
                          f"'avbalance train'")
    config = RunConfig.model_validate(state["config"])
    if data_root is not None:
        config.data.root = data_root
    if batch_size is not None:
        config.data.eval_batch_size = batch_size
    model = build_model(state["model_spec"])
    load_state(model, model_state(saved), path)
    datamodule = BalancedDataModule(config.data, seed=config.trainer.seed)
    return LoadedRun(model.eval(), datamodule, config, path)


def split_dataset(datamodule: BalancedDataModule, split: str) -> Dataset:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return {"train": datamodule.train_set, "val": datamodule.val_set, "test": datamodule.test_set}[split]


def eval_batch_size(config: RunConfig) -> int:
    return config.data.eval_batch_size or config.data.batch_size


# -- run folders -----------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """The files of one run folder that a report reads."""

    folder: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    method_logs: list[dict[str, float]]  # rows of metrics.csv that carry ``method/...`` values
    probe: dict[str, Any] | None

    @property
    def seed(self) -> int:
        return int(self.config.get("trainer", {}).get("seed", 0))

    @property
    def modalities(self) -> list[str]:
        keys = self.metrics.get("test", {})
        return list(dict.fromkeys(k[len("acc_"):] for k in keys if k.startswith("acc_")))  # model order


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None


def read_method_logs(path: Path) -> list[dict[str, float]]:
    """The per-epoch means of the method's logs (``method/<name>_epoch``: OGM coefficients and ratios,
    ...) from Lightning's CSV log, with the ``epoch`` and ``step`` of each row."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as stream:
        for row in csv.DictReader(stream):
            values = {k: float(v) for k, v in row.items() if k and k.startswith("method/") and k.endswith("_epoch") and v}
            if values:
                values["step"] = float(row["step"])
                values["epoch"] = float(row["epoch"])
                rows.append(values)
    return rows


def read_run(folder: str | Path) -> RunRecord:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such run folder")
    for name in ("metrics.json", "config.yaml"):
        if not (folder / name).is_file():
            raise DataError(f"{folder}: not a finished run folder (no {name}); give folders written by "
                            f"'avbalance train --out'")
    history_path, probe_path = folder / "history.json", folder / "probe.json"
    return RunRecord(
        folder=folder,
        config=yaml.safe_load((folder / "config.yaml").read_text()) or {},
        metrics=_read_json(folder / "metrics.json"),
        history=_read_json(history_path) if history_path.is_file() else [],
        method_logs=read_method_logs(folder / "metrics.csv"),
        probe=_read_json(probe_path) if probe_path.is_file() else None,
    )
