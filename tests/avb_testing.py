"""Small shared helpers for the tests (tiny models and batches, paths)."""

from pathlib import Path

import torch

from avbalance.models import model_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHAPES = {"audio": (1, 16, 16), "visual": (3, 2, 16, 16), "flow": (2, 2, 16, 16)}


def tiny_spec(fusion: str = "concat", num_classes: int = 5, modalities=("audio", "visual"), **fusion_options):
    return model_spec({m: SHAPES[m] for m in modalities}, num_classes, fusion=fusion,
                      fusion_options=fusion_options, width=4, layers=[1, 1])


def tiny_batch(batch_size: int = 6, num_classes: int = 5, modalities=("audio", "visual"), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(batch_size, *SHAPES[m], generator=generator) for m in modalities}
    batch["label"] = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return batch
