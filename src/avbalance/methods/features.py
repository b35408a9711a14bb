"""Per-sample encoder features of a whole split, gathered over ranks (for methods that cluster or
compare the representations of all training samples)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .distributed import gather_by_index, is_distributed
from .modes import model_mode


def encoder_features(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features of every encoder and the labels of all samples of a split (all ranks),
    computed in eval mode without gradients; rows are ordered by sample index."""
    modalities = list(model.encoders)
    parts: dict[str, list] = {m: [] for m in (*modalities, "label")}
    with model_mode(model, False), torch.no_grad():
        position = 0
        for batch in batches:
            if "index" in batch:
                index = batch["index"]
            elif is_distributed():
                raise ValueError("epoch data batches need an 'index' entry under DDP")
            else:
                index = torch.arange(position, position + len(batch["label"]))
            position += len(batch["label"])
            features = model.encode(batch)
            for m in modalities:
                parts[m].append((index, features[m].float()))
            parts["label"].append((index, batch["label"].float().unsqueeze(1)))
    widths = {**{m: int(model.head.dims[m]) for m in modalities}, "label": 1}
    gathered = {m: gather_by_index(parts[m], widths[m], device) for m in parts}
    labels = gathered.pop("label").squeeze(1).round().long()
    return gathered, labels
