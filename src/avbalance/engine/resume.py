"""What exact resumption needs beyond Lightning's own checkpoint content: the random number
generators' states and the position in the epoch's data order.

Data order is a pure function of (seed, epoch): the training sampler is a seeded
``DistributedSampler`` (one replica in a single process), and on resume it skips the batches of the
interrupted epoch that were already trained. Together with the restored generator states, a run
killed at any moment and resumed from its last checkpoint ends with the same weights as an
uninterrupted run (on CPU with deterministic algorithms).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def capture_rng() -> dict[str, Any]:
    """Every global generator's state, as tensors and plain numbers (safe to load)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableSampler(DistributedSampler):
    """A seeded, per-epoch shuffling sampler (any number of replicas, one included) that can start
    an epoch part-way through: ``resume(epoch, samples_done)``."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip = 0

    def resume(self, epoch: int, samples_done: int) -> None:
        self.set_epoch(epoch)
        self._skip = samples_done

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        # The length stays that of a whole epoch: Lightning counts the resumed epoch's batches from
        # where it stopped, so the shortened iteration ends exactly at the epoch's end.
        return iter(indices[skip:])
