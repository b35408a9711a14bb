"""Datasets read from a prepared cache (see ``avbalance.data.prepare.cache``).

A sample is ``{modality: Tensor, ..., "label": int64 Tensor}``:

* audio features: ``(1, F, T)`` float32; with ``audio_frames`` a window of T columns (random in
  training when ``augment`` is on, the centre otherwise);
* frames: ``(3, K, H, W)`` float32 normalised (ImageNet mean/std unless the dataset says
  otherwise; grey images are repeated to 3 channels); flow: ``(2, K, H, W)``. The K frames come
  from K equal segments of the stored frames: a random frame per segment in training, the centre
  frame in evaluation, always in time order. Training with ``augment`` applies one random resized
  crop and one horizontal flip to all frames (and the flow) of a sample;
* arrays: the stored float32 array.

Random choices use torch's generator, which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from ...errors import ConfigError, DataError
from ..base import DatasetInfo, DatasetSplits
from ..prepare.cache import MANIFEST, META, PreparedCache

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GREY_STATS = ((0.1307,), (0.3081,))  # MNIST's statistics; BalanceMM also uses them for flow
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def open_cache(root, dataset: str) -> PreparedCache:
    """The cache at ``root``, checked to hold ``dataset``."""
    if root is None:
        raise ConfigError(
            f"dataset {dataset!r} reads a prepared cache: pass --data CACHE, a folder made by "
            f"'avbalance prepare {dataset} --root RAW --out CACHE'"
        )
    cache = PreparedCache(root)
    if cache.dataset != dataset:
        raise DataError(f"{cache.root / META}: this cache holds {cache.dataset!r}, not {dataset!r}")
    return cache


@dataclass
class LoaderOptions:
    frames: int = 3
    image_size: int | None = None  # None: the stored size
    augment: bool = True
    audio_frames: int | None = None  # None: every stored feature column
    stats: dict[str, tuple] = field(default_factory=dict)  # per modality (mean, std); default ImageNet / grey

    def validate(self) -> None:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"option frames must be a positive integer, got {self.frames!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise ConfigError(f"option image_size must be an integer of at least 8, got {self.image_size!r}")
        if not isinstance(self.augment, bool):
            raise ConfigError(f"option augment must be true or false, got {self.augment!r}")


def segment_indices(count: int, k: int, train: bool) -> np.ndarray:
    """K indices into ``count`` frames, one per equal segment, non-decreasing (time order)."""
    edges = torch.linspace(0, count, k + 1, dtype=torch.float64)
    low, width = edges[:-1], edges[1:] - edges[:-1]
    positions = low + (torch.rand(k, dtype=torch.float64) if train else 0.5) * width
    return positions.long().clamp_(0, count - 1).numpy()


class CachedClipDataset(Dataset):
    """One split of a prepared cache."""

    def __init__(
        self, cache: PreparedCache, rows: list[dict], labels: list[int], modalities: list[str], options: LoaderOptions, train: bool
    ):
        self.cache = cache
        self.modalities = modalities
        self.kinds = {m: cache.modalities[m]["kind"] for m in modalities}
        self.row_shapes = {m: tuple(cache.modalities[m]["row_shape"]) for m in modalities}
        self.ids = [row["id"] for row in rows]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.offsets = {m: np.array([int(r[f"{m}_offset"]) for r in rows], dtype=np.int64) for m in modalities}
        self.counts = {m: np.array([int(r[f"{m}_count"]) for r in rows], dtype=np.int64) for m in modalities}
        self.options = options
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        kind, row = self.kinds[modality], self.row_shapes[modality]
        if kind == "feature":
            window = self.options.audio_frames
            return (1, row[0], min(window, row[1]) if window else row[1])
        if kind in ("frames", "flow"):
            size = self.options.image_size or row[0]
            channels = 2 if kind == "flow" else 3
            return (channels, self.options.frames, size, size)
        return row

    def __getitem__(self, index: int) -> dict:
        crop = self._draw_crop()
        sample = {}
        for modality in self.modalities:
            offset, count = self.offsets[modality][index], self.counts[modality][index]
            kind = self.kinds[modality]
            if kind == "feature":
                sample[modality] = self._features(modality, offset)
            elif kind in ("frames", "flow"):
                sample[modality] = self._frames(modality, offset, count, crop)
            else:
                sample[modality] = torch.from_numpy(np.array(self.cache.array(modality)[offset], dtype=np.float32))
        sample["label"] = self.labels[index]
        return sample

    def _features(self, modality: str, offset: int) -> torch.Tensor:
        features = self.cache.array(modality)[offset]
        window, total = self.options.audio_frames, features.shape[1]
        if window and window < total:
            start = int(torch.randint(0, total - window + 1, ())) if self._random() else (total - window) // 2
            features = features[:, start : start + window]
        return torch.from_numpy(np.array(features, dtype=np.float32))[None]

    def _frames(self, modality: str, offset: int, count: int, crop) -> torch.Tensor:
        indices = offset + segment_indices(int(count), self.options.frames, self.train)
        clip = torch.from_numpy(np.array(self.cache.array(modality)[indices]))  # (K, H, W, C) uint8
        clip = clip.permute(0, 3, 1, 2)
        size = self.options.image_size or clip.shape[-1]
        if crop is not None:
            clip = _apply_crop(clip, crop, size, is_flow=self.kinds[modality] == "flow")
        elif clip.shape[-1] != size or clip.shape[-2] != size:
            clip = TF.resize(clip, [size, size], antialias=True)
        clip = clip.float().div_(255.0)
        mean, std = self._stats(modality, clip.shape[1])
        clip = (clip - mean) / std
        if clip.shape[1] == 1 and self.kinds[modality] == "frames":
            clip = clip.expand(-1, 3, -1, -1)
        return clip.permute(1, 0, 2, 3).contiguous()  # (C, K, H, W)

    def _stats(self, modality: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        default = IMAGENET_STATS if channels == 3 else GREY_STATS
        mean, std = self.options.stats.get(modality, default)
        shape = (1, -1, 1, 1)
        return torch.tensor(mean).view(shape), torch.tensor(std).view(shape)

    def _random(self) -> bool:
        return self.train and self.options.augment

    def _draw_crop(self):
        """One random resized crop + flip shared by every frame modality of the sample."""
        if not self._random() or not any(k in ("frames", "flow") for k in self.kinds.values()):
            return None
        top, left, height, width = RandomResizedCrop.get_params(torch.empty(1, 1000, 1000), CROP_SCALE, CROP_RATIO)
        return top / 1000, left / 1000, height / 1000, width / 1000, bool(torch.rand(()) < 0.5)


def _apply_crop(clip: torch.Tensor, crop, size: int, is_flow: bool) -> torch.Tensor:
    top, left, height, width, flip = crop
    h, w = clip.shape[-2:]
    box = (int(top * h), int(left * w), max(1, int(height * h)), max(1, int(width * w)))
    clip = TF.resized_crop(clip, *box, [size, size], antialias=True)
    if flip:
        clip = clip.flip(-1)
        if is_flow:  # mirroring the image reverses horizontal motion (flow stored around 128)
            clip[:, 0] = 255 - clip[:, 0]
    return clip


def build_splits(
    cache: PreparedCache,
    options: LoaderOptions,
    *,
    name: str | None = None,
    label_column: str = "label",
    class_names: list[str] | None = None,
    split_of: Callable[[dict], str | None] | None = None,
    modalities: list[str] | None = None,
    recommended_encoder: dict | None = None,
) -> DatasetSplits:
    """Train / val / test datasets of a cache. ``val`` is None when the cache has no val clips."""
    options.validate()
    class_names = class_names or cache.class_names
    modalities = modalities or [m for m, spec in cache.modalities.items() if spec["kind"] != "wave"]
    split_of = split_of or (lambda row: row["split"])
    manifest = cache.version_dir / MANIFEST
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for row in cache.ok_rows():
        split = split_of(row)
        if split in by_split:
            by_split[split].append(row)
    for split in ("train", "test"):
        if not by_split[split]:
            raise DataError(f"{manifest}: no prepared clip in the {split} split")
    index = {label: i for i, label in enumerate(class_names)}

    def label_of(row: dict) -> int:
        if label_column == "label":
            return int(row["label_index"])
        if row.get(label_column) not in index:
            raise DataError(f"{manifest}: clip {row['id']} has unknown {label_column} {row.get(label_column)!r}")
        return index[row[label_column]]

    def make(split: str, train: bool) -> CachedClipDataset | None:
        rows = by_split[split]
        if not rows:
            return None
        return CachedClipDataset(cache, rows, [label_of(r) for r in rows], modalities, options, train)

    train = make("train", True)
    info = DatasetInfo(
        name=name or cache.dataset,
        num_classes=len(class_names),
        input_shapes={m: train.input_shape(m) for m in modalities},
        class_names=list(class_names),
        recommended_encoder=dict(recommended_encoder or {}),
    )
    return DatasetSplits(info=info, train=train, val=make("val", False), test=make("test", False))
