"""What the analyses read: a trained run (loaded by :func:`avbalance.engine.loading.load_run`), its
splits, and the files of a run folder."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..engine.config import RunConfig, read_yaml
from ..engine.datamodule import BalancedDataModule
from ..engine.loading import LoadedRun, load_run, resolve_checkpoint, run_folder_of
from ..errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
__all__ = [
    "SPLITS",
    "LoadedRun",
    "RunRecord",
    "eval_batch_size",
    "load_run",
    "pick_device",
    "read_method_logs",
    "read_run",
    "resolve_checkpoint",
    "run_folder_of",
    "split_dataset",
]


def pick_device(accelerator: str = "auto") -> torch.device:
    if accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):  # mps: evaluated on the CPU here
        raise ConfigError(f"--accelerator {accelerator!r}: choose cpu, gpu or auto")
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


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
        return list(dict.fromkeys(k[len("acc_") :] for k in keys if k.startswith("acc_")))  # model order


JSON_KINDS = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _read_json(path: Path, kind: type) -> Any:
    """The JSON value in ``path``, which must be of ``kind`` (dict or list)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(value, kind):
        expected = JSON_KINDS[kind].split(" ", 1)[1]
        raise DataError(f"{path}: expected a JSON {expected}, found {JSON_KINDS.get(type(value), 'another value')}")
    return value


def _read_metrics(path: Path) -> dict[str, Any]:
    """``metrics.json``: its ``val`` and ``test`` entries are objects of metrics."""
    metrics = _read_json(path, dict)
    for split in ("val", "test"):
        if split in metrics and not isinstance(metrics[split], dict):
            found = JSON_KINDS.get(type(metrics[split]), "another value")
            raise DataError(f"{path}: {split!r} should be an object of metrics, found {found}")
    return metrics


def _read_history(path: Path) -> list[dict[str, Any]]:
    """``history.json``: a list of one object per epoch."""
    history = _read_json(path, list)
    if not all(isinstance(record, dict) for record in history):
        raise DataError(f"{path}: expected a list of one object per epoch")
    return history


def read_method_logs(path: Path) -> list[dict[str, float]]:
    """The per-epoch means of the method's logs (``method/<name>_epoch``: OGM coefficients and ratios,
    ...) from Lightning's CSV log, with the ``epoch`` and ``step`` of each row."""
    if not path.is_file():
        return []
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                values = {
                    k: float(v) for k, v in row.items() if k and k.startswith("method/") and k.endswith("_epoch") and v
                }
                if values:
                    values["step"] = float(row["step"])
                    values["epoch"] = float(row["epoch"])
                    rows.append(values)
    except (ValueError, TypeError, KeyError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: not a training log as 'avbalance train' writes it ({error})") from None
    return rows


def read_run(folder: str | Path) -> RunRecord:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such run folder")
    for name in ("metrics.json", "config.yaml"):
        if not (folder / name).is_file():
            raise DataError(
                f"{folder}: not a finished run folder (no {name}); give folders written by 'avbalance train --out'"
            )
    history_path, probe_path = folder / "history.json", folder / "probe.json"
    return RunRecord(
        folder=folder,
        config=read_yaml(folder / "config.yaml"),
        metrics=_read_metrics(folder / "metrics.json"),
        history=_read_history(history_path) if history_path.is_file() else [],
        method_logs=read_method_logs(folder / "metrics.csv"),
        probe=_read_json(probe_path, dict) if probe_path.is_file() else None,
    )
