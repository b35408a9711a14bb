"""The Lightning data module: dataset splits from the registry, a seeded validation split carved
from train when the dataset has none (never from test), and the data loaders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, random_split

from ..data import DatasetInfo, build_dataset
from ..data.collate import collate_for
from ..data.datasets.cached import normalised_frames, uint8_frames
from ..errors import ConfigError, DataError
from .config import DataConfig
from .resume import ResumableSampler


class ModalitySubset(Dataset):
    """Keeps only some modalities of each sample."""

    def __init__(self, dataset: Dataset, modalities: tuple[str, ...]):
        self.dataset, self.keep = dataset, (*modalities, "label")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        return {key: sample[key] for key in self.keep}


class ResampledDataset(Dataset):
    """A training set rebuilt by a resampling method: ``entries`` are ``(index, modalities to
    zero)``; a zeroed modality's input is replaced by zeros."""

    def __init__(self, dataset: Dataset, entries):
        self.dataset, self.entries = dataset, list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index, zeroed = self.entries[position]
        sample = dict(self.dataset[int(index)])
        for modality in zeroed:
            sample[modality] = torch.zeros_like(sample[modality])
        return sample


class UInt8Frames(Dataset):
    """``dataset`` read with its frames served as uint8 (:func:`avbalance.data.datasets.cached.uint8_frames`),
    through any wrapper (subset, modality subset): the data module's loaders, whose batches the
    :class:`FrameNormaliser` turns into normalised floats on the model's device."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with uint8_frames():
            return self.dataset[index]


class FrameNormaliser:
    """A batch transform: every uint8 frame tensor ``(B, C, K, H, W)`` of ``statistics``' modalities
    becomes float32 ``(x / 255 - mean) / std`` per channel (grey repeated to 3 channels where asked),
    on the batch's device; every other tensor passes unchanged. ``statistics``: modality ->
    (mean, std, grey to RGB), as :meth:`CachedClipDataset.frame_normalisation` gives them."""

    def __init__(self, statistics: dict[str, tuple[tuple, tuple, bool]]):
        self.statistics = dict(statistics)
        self._constants: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self.statistics)

    def _mean_std(self, modality: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (modality, device)
        if key not in self._constants:  # made once per device: no copy to the device per batch
            mean, std, _ = self.statistics[modality]
            self._constants[key] = tuple(
                torch.tensor(values, dtype=torch.float32, device=device) for values in (mean, std)
            )
        return self._constants[key]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        raw = [m for m in self.statistics if isinstance(batch.get(m), torch.Tensor) and batch[m].dtype == torch.uint8]
        if not raw:
            return batch
        batch = dict(batch)
        for modality in raw:
            frames = batch[modality]
            mean, std = self._mean_std(modality, frames.device)
            batch[modality] = normalised_frames(frames, mean, std, to_rgb=self.statistics[modality][2])
        return batch


def frame_statistics(dataset: Dataset) -> dict[str, tuple[tuple, tuple, bool]]:
    """The frame normalisation of the dataset under any subset wrappers (empty when it serves no
    fixed-length frames)."""
    while not hasattr(dataset, "frame_normalisation") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset.frame_normalisation() if hasattr(dataset, "frame_normalisation") else {}


#: ``(index into the training set, modalities to zero)`` pairs: one epoch's training samples.
TrainEntries = Sequence[tuple[int, tuple[str, ...]]]


class BalancedDataModule(L.LightningDataModule):
    """``train_entries(epoch)``: the training samples of an epoch (None: the whole training set),
    asked each time the training loader is built; a resampling method's choice (the trainer then
    rebuilds the loader every epoch)."""

    def __init__(
        self,
        config: DataConfig,
        seed: int = 0,
        train_entries: Callable[[int], TrainEntries | None] | None = None,
        deterministic: bool = False,
    ):
        super().__init__()
        self.config, self.seed, self.train_entries = config, seed, train_entries
        self.workers = config.loader_workers(deterministic)
        splits = build_dataset(config.dataset, config.root, **config.options)
        self.info = self._select_modalities(splits.info)
        train, val, test = splits.train, splits.val, splits.test
        if val is None:
            val_count = max(1, round(len(train) * config.val_fraction))
            if val_count >= len(train):
                raise DataError(
                    f"dataset {config.dataset!r}: the train split has {len(train)} samples, "
                    f"too few to carve a validation split from"
                )
            generator = torch.Generator().manual_seed(seed)
            train, val = random_split(train, [len(train) - val_count, val_count], generator=generator)
        for name, split in {"train": train, "val": val, "test": test}.items():
            if len(split) == 0:
                raise DataError(f"dataset {config.dataset!r} at {config.root}: the {name} split is empty")
        if self.info.modalities != splits.info.modalities:
            train, val, test = (ModalitySubset(s, self.info.modalities) for s in (train, val, test))
        self.train_set, self.val_set, self.test_set = train, val, test
        #: normalises the loaders' uint8 frames per batch (BalancedModule.on_after_batch_transfer)
        self.batch_transform = FrameNormaliser(frame_statistics(train))
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def _select_modalities(self, info: DatasetInfo) -> DatasetInfo:
        if self.config.modalities is None:
            return info
        if len(set(self.config.modalities)) != len(self.config.modalities) or not self.config.modalities:
            raise ConfigError(
                f"config: data.modalities: give each modality once, at least one (got {self.config.modalities})"
            )
        unknown = [m for m in self.config.modalities if m not in info.input_shapes]
        if unknown:
            raise ConfigError(
                f"dataset {info.name!r} has no modality {unknown[0]!r}; "
                f"its modalities are: {', '.join(info.modalities)}"
            )
        keep = self.config.modalities
        return replace(
            info,
            input_shapes={m: info.input_shapes[m] for m in keep},
            input_kinds={m: kind for m, kind in info.input_kinds.items() if m in keep},
            variable_length=[m for m in info.variable_length if m in keep],
            vocab_sizes={m: size for m, size in info.vocab_sizes.items() if m in keep},
        )

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _sampler(self, dataset: Dataset, train: bool):
        """Training: a seeded sampler whose order depends only on (seed, epoch) -- Lightning sets
        its epoch -- and that can resume part-way through an epoch. Evaluation under DDP: every
        sample goes to exactly one rank (no padding duplicates)."""
        rank, world = self._world()
        if train:
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=self.seed)
            if self._resume_at is not None:
                epoch, batches_done = self._resume_at
                sampler.resume(epoch, batches_done * self.config.batch_size)
                self._resume_at = None
            return sampler
        if world == 1:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    # Lightning saves and restores these with every checkpoint.
    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "epoch": trainer.current_epoch,
            "batches_done": progress.processed,
            "batches_per_epoch": int(trainer.num_training_batches),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state["batches_done"] < state["batches_per_epoch"]:  # killed part-way through
            self._resume_at = (state["epoch"], state["batches_done"])

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """Batches of ``dataset``; frames come as uint8 for :attr:`batch_transform` to normalise,
        except in a resampled set, whose zeroed inputs are zeros after normalisation."""
        batch_size = self.config.batch_size if train else (self.config.eval_batch_size or self.config.batch_size)
        sampler = self._sampler(dataset, train)
        workers = self.workers
        served = UInt8Frames(dataset) if self.batch_transform and not isinstance(dataset, ResampledDataset) else dataset
        return DataLoader(
            served,
            batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size * self._world()[1],
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self._pin_memory(),
            collate_fn=collate_for(self.info),
        )

    def _pin_memory(self) -> bool:
        """Page-locked batches where they go to a CUDA device (asynchronous copies)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # On the model's device: the loaders' uint8 frames become normalised floats here.
        return self.batch_transform(batch)

    def train_dataloader(self) -> DataLoader:
        entries = self.train_entries(self.trainer.current_epoch) if self.train_entries is not None else None
        if entries is not None:
            return self._loader(ResampledDataset(self.train_set, entries), train=True)
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
