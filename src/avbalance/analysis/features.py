"""Frozen encoder features of a whole split: the analyses encode a split once and then only
evaluate the fusion head (the encoders need not rerun to remove a modality)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.collate import collate_samples
from ..models.model import MultimodalModel, lengths_of


@dataclass
class SplitFeatures:
    """Frozen encoder features of a whole split: ``features[m]`` (N, D_m) and ``labels`` (N,), on CPU."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor


@torch.no_grad()
def extract_features(
    model: MultimodalModel,
    dataset: Dataset,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> SplitFeatures:
    """Encode a whole split with frozen encoders: eval mode (BatchNorm running statistics, no
    dropout), no gradients, samples in dataset order (no shuffling, nothing dropped)."""
    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_samples
    )
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    labels = []
    for batch in loader:
        inputs = {**{m: batch[m] for m in model.modalities}, **lengths_of(batch, model.modalities)}
        encoded = model.encode({key: value.to(device) for key, value in inputs.items()})
        for modality, feature in encoded.items():
            chunks[modality].append(feature.float().cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    return SplitFeatures({m: torch.cat(c) for m, c in chunks.items()}, torch.cat(labels))
