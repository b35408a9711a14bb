"""Data access for methods outside the training step (:class:`avbalance.methods.base.EpochData`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..data.collate import collate_samples


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _Indexed(Dataset):
    """Adds each sample's index in the full dataset as ``"index"``."""

    def __init__(self, dataset: Dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        return {**self.dataset[index], "index": torch.tensor(index)}


def shuffle_seed(seed: int, epoch: int, call: int) -> int:
    """The seed of the ``call``-th shuffled pass (1, 2, ...) of ``epoch``: a new order for every
    pass of every epoch, the same for a given run seed (and so after a resume at an epoch start)."""
    return int(np.random.SeedSequence([seed, epoch, call]).generate_state(1, np.uint64)[0])


class LoaderEpochData:
    """Yields this rank's shard of the training / validation sets as batches on ``device``.

    Shuffled passes are numbered within each epoch (:meth:`set_epoch` starts a new count), and each
    pass's order is seeded by ``(seed, epoch, pass number)``."""

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        seed: int = 0,
        epoch: int = 0,
    ):
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.device, self.num_workers, self.seed = batch_size, device, num_workers, seed
        self.epoch, self.shuffles = epoch, 0

    def set_epoch(self, epoch: int) -> None:
        """Number the shuffled passes of ``epoch`` from the start (a no-op within the same epoch)."""
        if epoch != self.epoch:
            self.epoch, self.shuffles = epoch, 0

    def _shard(self, dataset: Dataset) -> Dataset:
        rank, world = _rank_and_world()
        return _Indexed(dataset, range(rank, len(dataset), world))

    def _batches(self, dataset: Dataset, limit: int | None, shuffle: bool) -> Iterator[dict]:
        generator = None
        if shuffle:  # the same order on every rank, different every pass
            self.shuffles += 1
            generator = torch.Generator().manual_seed(shuffle_seed(self.seed, self.epoch, self.shuffles))
        loader = DataLoader(
            self._shard(dataset),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
        )
        for index, batch in enumerate(loader):
            if limit is not None and index >= limit:
                return
            yield to_device(batch, self.device)

    def train_batches(self, limit: int | None = None, shuffle: bool = False) -> Iterator[dict]:
        return self._batches(self.train_set, limit, shuffle)

    def val_batches(self, limit: int | None = None) -> Iterator[dict]:
        return self._batches(self.val_set, limit, shuffle=False)

    def num_train_samples(self) -> int:
        return len(self.train_set)
