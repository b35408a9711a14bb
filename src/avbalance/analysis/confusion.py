"""Confusion matrices and per-class accuracy of the fused output and of every modality's logits.

Rows are true classes and columns predicted classes (counts). The per-class accuracy of class ``k``
is ``N[k, k] / sum_j N[k, j]`` (the recall of ``k``); it is ``None`` for a class absent from the split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from ..models.fusion import FusionHead
from .features import SplitFeatures

FUSED = "fused"


@torch.no_grad()
def head_logits(head: FusionHead, features: SplitFeatures, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """``{"fused": (N, C), <modality>: (N, C)}`` from the fusion head on precomputed features."""
    device = next(head.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(features.labels), batch_size):
        output = head({m: f[start : start + batch_size].to(device) for m, f in features.features.items()})
        for name, logits in {FUSED: output.logits, **output.unimodal_logits}.items():
            chunks.setdefault(name, []).append(logits.float().cpu())
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def per_class_accuracy(matrix: torch.Tensor) -> list[float | None]:
    totals = matrix.sum(dim=1).tolist()
    return [int(matrix[k, k]) / total if total else None for k, total in enumerate(totals)]


def confusion_matrices(
    logits: Mapping[str, torch.Tensor], labels: torch.Tensor, num_classes: int, class_names: list[str] | None = None
) -> dict[str, Any]:
    """``{"class_names": [...], "outputs": {output: {"matrix": C x C counts, "per_class_acc": [...]}}}``."""
    outputs = {}
    for name, output_logits in logits.items():
        matrix = multiclass_confusion_matrix(output_logits.argmax(dim=1), labels, num_classes)
        outputs[name] = {"matrix": matrix.tolist(), "per_class_acc": per_class_accuracy(matrix)}
    names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
    return {"class_names": names, "outputs": outputs}
