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


def train_on_synthetic(method: str, out, *extra: str, **data_options) -> int:
    """``avbalance train`` of ``method`` for 2 epochs (batch 32) on synthetic data shaped by
    ``data_options``; ``extra`` command-line arguments come last. Returns the exit status."""
    from avbalance.cli import main  # imported here: DDP worker processes need not load the engine

    sets = [arg for key, value in data_options.items() for arg in ("--set", f"data.options.{key}={value}")]
    return main(["train", "--method", method, "--epochs", "2", "--batch-size", "32", "--out", str(out), *sets,
                 "--set", "trainer.progress_bar=false", *extra])
