"""Fused and per-modality classification metrics (torchmetrics, so they reduce across DDP ranks).

Keys: ``acc``, ``f1_macro``, ``map`` for the fused logits and ``acc_<m>``, ``f1_macro_<m>``,
``map_<m>`` for each modality's logits.

* ``acc`` -- top-1 accuracy over samples.
* ``f1_macro`` -- per-class F1 averaged over classes; torchmetrics leaves out classes that neither
  occur nor are predicted in the evaluated split (BalanceMM counts them as 0).
* ``samples`` -- how many samples were evaluated (all ranks together; each sample counts once).
* ``min_branch_acc``, ``branch_hmean`` -- with two or more modalities: the lowest per-modality
  accuracy and the harmonic mean of the per-modality accuracies (balance-aware model selection).
* ``map`` -- macro average precision: per-class AP of the softmax scores (one-vs-rest, exact, no
  thresholds), averaged over classes; a class with no positive sample has no defined AP and is left
  out of the average.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchmetrics import MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassAveragePrecision, MulticlassF1Score

FUSED = "fused"


def _collection(num_classes: int, full: bool) -> MetricCollection:
    # Training accuracy is updated every step: its input checks would wait for the device each time
    # (the engine's labels and logits are well-formed by construction); evaluation keeps them.
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=full)}
    if full:
        metrics["f1_macro"] = MulticlassF1Score(num_classes, average="macro")
        metrics["map"] = MulticlassAveragePrecision(num_classes, average="macro", thresholds=None)
    return MetricCollection(metrics)


def branch_balance(branch_accuracies: Sequence[float]) -> dict[str, float]:
    """``min_branch_acc`` (the weakest branch) and ``branch_hmean`` (harmonic mean: high only when
    every branch is), for models of two or more modalities."""
    if len(branch_accuracies) < 2:
        return {}
    return {
        "min_branch_acc": min(branch_accuracies),
        "branch_hmean": statistics.harmonic_mean(branch_accuracies),
    }


def metric_names(modalities: Sequence[str], full: bool = True) -> list[str]:
    """The keys :meth:`MultimodalMetrics.compute` returns for a model of ``modalities``."""
    kinds = ["acc", "f1_macro", "map"] if full else ["acc"]
    names = ["samples", *kinds, *(f"{kind}_{m}" for m in modalities for kind in kinds)]
    return names + list(branch_balance([0.0] * len(modalities)))


class MultimodalMetrics(nn.Module):
    """Accumulates metrics of the fused output and of every modality's logits over an epoch."""

    def __init__(self, num_classes: int, modalities: Sequence[str], full: bool = True):
        super().__init__()
        self.outputs = (FUSED, *modalities)
        self.collections = nn.ModuleDict({name: _collection(num_classes, full) for name in self.outputs})
        self.samples = SumMetric(nan_strategy="disable")  # a count of ones: no NaN check (a host sync)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, unimodal_logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.samples.update(torch.ones_like(labels, dtype=torch.float32))
        self.collections[FUSED].update(logits.float().softmax(1), labels)
        for modality, modality_logits in unimodal_logits.items():
            self.collections[modality].update(modality_logits.float().softmax(1), labels)

    def compute(self) -> dict[str, float]:
        results = {"samples": int(self.samples.compute())}
        for name, collection in self.collections.items():
            suffix = "" if name == FUSED else f"_{name}"
            for key, value in collection.compute().items():
                results[f"{key}{suffix}"] = float(value)
        results.update(branch_balance([results[f"acc_{m}"] for m in self.outputs[1:]]))
        return results

    def reset(self) -> None:
        for collection in self.collections.values():
            collection.reset()
        self.samples.reset()
