"""Shapley values and confusion matrices of a trained checkpoint on one split, from one pass of
the frozen encoders (``avbalance test`` and ``avbalance report`` call this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.model import MultimodalModel
from .confusion import confusion_matrices, head_logits
from .features import SplitFeatures, extract_features
from .runs import LoadedRun, eval_batch_size, load_run, pick_device, split_dataset
from .shapley import check_removal, modality_contributions


def analyse_features(
    model: MultimodalModel,
    features: SplitFeatures,
    removal: str = "zero",
    train_features: SplitFeatures | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    num_classes = model.head.num_classes
    return {
        "shapley": modality_contributions(model.head, features, removal, train_features),
        "confusion": confusion_matrices(head_logits(model.head, features), features.labels, num_classes, class_names),
    }


def analyse_run(
    run: LoadedRun, split: str = "test", removal: str = "zero", accelerator: str = "auto"
) -> dict[str, Any]:
    """``{"split", "checkpoint", "shapley": {...}, "confusion": {...}}`` of a loaded run on one split."""
    device, size = pick_device(accelerator), eval_batch_size(run.config)
    features = extract_features(run.model, split_dataset(run.datamodule, split), size, device)
    train_features = None
    if removal == "mean":
        train_features = extract_features(run.model, run.datamodule.train_set, size, device)
    result = analyse_features(run.model, features, removal, train_features, run.datamodule.info.class_names)
    return {"split": split, "checkpoint": str(run.checkpoint), **result}


def analyse_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    removal: str = "zero",
    data_root: str | None = None,
    batch_size: int | None = None,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """:func:`analyse_run` for a run folder or a checkpoint."""
    check_removal(removal)  # before the costly loading
    run = load_run(checkpoint, data_root=data_root, batch_size=batch_size)
    return analyse_run(run, split, removal, accelerator)
