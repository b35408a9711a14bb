"""Linear probing: how good is each frozen encoder's representation? (METHODS.md §5.3)

The encoders of a trained model are frozen (eval mode, no gradients) and encode the train,
validation and test splits once. A linear classifier -- multinomial logistic regression on
standardised features, fitted on the training features only -- is then fitted per modality and on
the concatenation of all modalities' features, and scored on the validation and test features.
The OGM-GE paper motivates itself with this measurement: the visual encoder of a jointly trained
model probes worse than the same encoder trained alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..models.model import MultimodalModel
from .features import SplitFeatures, extract_features
from .runs import LoadedRun, eval_batch_size, load_run, pick_device, split_dataset

CONCAT = "concat"
CLASSIFIER = "logistic regression (L2, C={C}) on standardised features, lbfgs, fitted on train"


def probe_inputs(features: SplitFeatures) -> dict[str, np.ndarray]:
    """One design matrix per probed representation: each modality, and their concatenation when
    there are two or more modalities."""
    inputs = {m: f.numpy() for m, f in features.features.items()}
    if len(inputs) > 1:
        inputs[CONCAT] = np.concatenate(list(inputs.values()), axis=1)
    return inputs


def fit_probe(x: np.ndarray, y: np.ndarray, C: float = 1.0, seed: int = 0, max_iter: int = 2000) -> Pipeline:
    # Standardising makes one regularisation strength suit encoders whose feature scales differ.
    classifier = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return make_pipeline(StandardScaler(), classifier).fit(x, y)


def probe_features(splits: dict[str, SplitFeatures], C: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{representation: {split: accuracy}}`` for representations ``<modality>`` and ``concat``;
    ``splits`` holds ``"train"`` (used for fitting) and any evaluation splits."""
    inputs = {split: probe_inputs(features) for split, features in splits.items()}
    labels = {split: features.labels.numpy() for split, features in splits.items()}
    results: dict[str, dict[str, float]] = {}
    for name, x_train in inputs["train"].items():
        probe = fit_probe(x_train, labels["train"], C=C, seed=seed)
        results[name] = {split: float(probe.score(inputs[split][name], labels[split])) for split in splits}
    return results


def probe_model(
    model: MultimodalModel,
    datasets: dict[str, Any],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    C: float = 1.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Probe ``model``'s encoders: ``datasets`` maps ``"train"`` and evaluation splits to datasets."""
    splits = {name: extract_features(model, dataset, batch_size, device) for name, dataset in datasets.items()}
    return probe_features(splits, C=C, seed=seed)


def probe_run(run: LoadedRun, accelerator: str = "auto", C: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Probe a loaded run on its train, val and test splits: what ``avbalance probe`` writes to ``probe.json``."""
    datasets = {split: split_dataset(run.datamodule, split) for split in ("train", "val", "test")}
    results = probe_model(
        run.model, datasets, batch_size=eval_batch_size(run.config), device=pick_device(accelerator), C=C, seed=seed
    )
    return {
        "checkpoint": str(run.checkpoint),
        "classifier": CLASSIFIER.format(C=C),
        "seed": seed,
        "samples": {split: len(dataset) for split, dataset in datasets.items()},
        "accuracy": results,
    }


def probe_checkpoint(
    checkpoint: str | Path,
    data_root: str | None = None,
    batch_size: int | None = None,
    accelerator: str = "auto",
    C: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Probe a trained run given as a run folder or a checkpoint."""
    run = load_run(checkpoint, data_root=data_root, batch_size=batch_size)
    return probe_run(run, accelerator=accelerator, C=C, seed=seed)
